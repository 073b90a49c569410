"""The per-user intake rate (GENQ_USER_SUBMITS_PER_MINUTE): past it a submission is 429
rate_limited with Retry-After and writes nothing; other users are not affected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.settings import Settings
from tests.integration.api_support import (  # noqa: F401
    ADMIN,
    Api,
    User,
    api_fixture,
    running_app,
)

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 1}
PER_MINUTE = 3


@pytest.fixture(name="limited")
async def limited_api(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    configured = settings.model_copy(update={"user_submits_per_minute": PER_MINUTE})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


async def _jobs_of(api: Api, user: User) -> int:
    count = await api.pool.fetchval(
        "SELECT count(*) FROM generation_jobs WHERE user_id = $1", user.id)
    assert isinstance(count, int)
    return count


async def test_past_the_rate_is_429_with_retry_after_and_writes_nothing(limited: Api) -> None:
    api = limited
    a, b = await api.user(credits=100), await api.user(credits=100)
    for i in range(PER_MINUTE):
        r = await api.client.post("/v1/jobs", json=JOB,
                                  headers={**a.headers, "Idempotency-Key": f"a-{i}"})
        assert r.status_code == 202, r.text
    r = await api.client.post("/v1/jobs", json=JOB,
                              headers={**a.headers, "Idempotency-Key": "a-over"})
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["limit_per_minute"] == PER_MINUTE
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert error["details"]["retry_after_s"] == retry_after
    # Nothing written: no job, no hold, no idempotency record.
    assert await _jobs_of(api, a) == PER_MINUTE
    assert await api.balance(a) == (100 - PER_MINUTE, PER_MINUTE)
    assert await api.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = 'a-over'") == 0
    # Still refused on the next try; a refused submission does not extend the wait.
    again = await api.client.post("/v1/jobs", json=JOB, headers=a.headers)
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) <= retry_after
    # Another user has a rate of their own.
    for _ in range(PER_MINUTE):
        r = await api.client.post("/v1/jobs", json=JOB, headers=b.headers)
        assert r.status_code == 202, r.text
    assert await _jobs_of(api, b) == PER_MINUTE
    assert await api.balance(b) == (100 - PER_MINUTE, PER_MINUTE)


async def test_no_rate_by_default(api: Api) -> None:
    user = await api.user(credits=100)
    for _ in range(PER_MINUTE + 5):
        r = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
        assert r.status_code == 202, r.text


async def test_a_plan_sets_its_own_rate(limited: Api, tmp_path: Path) -> None:
    api = limited
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text('[[plans]]\nname = "slow"\nsubmits_per_minute = 1\n\n'
                          '[[plans]]\nname = "busy"\nsubmits_per_minute = 6\n')
    async with api.pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))
    slow, busy = await api.user(credits=100), await api.user(credits=100)
    for user, plan in ((slow, "slow"), (busy, "busy")):
        r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": plan},
                                 headers=ADMIN)
        assert r.status_code == 200, r.text
    assert (await api.client.post("/v1/jobs", json=JOB, headers=slow.headers)).status_code == 202
    r = await api.client.post("/v1/jobs", json=JOB, headers=slow.headers)
    assert r.status_code == 429
    assert r.json()["error"]["details"]["limit_per_minute"] == 1
    # Above the server's rate of PER_MINUTE: the plan's 6 hold.
    for _ in range(6):
        r = await api.client.post("/v1/jobs", json=JOB, headers=busy.headers)
        assert r.status_code == 202, r.text
    r = await api.client.post("/v1/jobs", json=JOB, headers=busy.headers)
    assert r.status_code == 429
    assert await _jobs_of(api, slow) == 1 and await _jobs_of(api, busy) == 6
