"""The per-user running cap at the intake: jobs past the cap wait in PostgreSQL, not on the
Redis queue; a place freed (a queued job canceled) lets the next one go; the enqueue sweep
dispatches no more than the cap."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.queue import JOB_KEY_PREFIX
from shared.settings import Settings
from tests.integration.api_support import ADMIN, Api, User, running_app
from worker import maintenance

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 1}
CAP = 2


@pytest.fixture(name="capped")
async def capped_api(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    configured = settings.model_copy(update={"user_max_running": CAP})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


async def _submit(api: Api, user: User) -> dict[str, object]:
    r = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
    assert r.status_code == 202, r.text
    job: dict[str, object] = r.json()
    return job


async def _on_queue(redis: aioredis.Redis, queue: str, job_id: object) -> bool:
    return await redis.zscore(queue, str(job_id)) is not None


async def test_jobs_past_the_cap_wait_and_a_cancel_lets_the_next_go(
    capped: Api, redis_client: aioredis.Redis
) -> None:
    api, queue = capped, capped.settings.queue_name
    user, other = await api.user(credits=10), await api.user(credits=10)
    jobs = [await _submit(api, user) for _ in range(4)]
    assert [j["enqueued_at"] is not None for j in jobs] == [True, True, False, False]
    assert [await _on_queue(redis_client, queue, j["id"]) for j in jobs] == [
        True, True, False, False]
    # Another user has places of their own.
    theirs = await _submit(api, other)
    assert theirs["enqueued_at"] is not None

    r = await api.client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user.headers)
    assert r.status_code == 200, r.text
    assert await _on_queue(redis_client, queue, jobs[2]["id"])
    assert not await _on_queue(redis_client, queue, jobs[3]["id"])
    r = await api.client.get(f"/v1/jobs/{jobs[2]['id']}", headers=user.headers)
    assert r.json()["enqueued_at"] is not None
    assert await api.balance(user) == (7, 3)


async def test_the_sweep_dispatches_up_to_the_cap(
    capped: Api, pool: Pool, redis_client: aioredis.Redis
) -> None:
    api, settings = capped, capped.settings
    user = await api.user(credits=10)
    jobs = [await _submit(api, user) for _ in range(5)]
    # As after a Redis outage: nothing on the queue, nothing marked dispatched.
    ids = [uuid.UUID(str(j["id"])) for j in jobs]
    await redis_client.delete(settings.queue_name, *(JOB_KEY_PREFIX + str(i) for i in ids))
    await pool.execute("UPDATE generation_jobs SET enqueued_at = NULL, "
                       "created_at = created_at - interval '5 seconds' WHERE id = ANY($1)", ids)
    report = await maintenance.enqueue_new_jobs(pool, api.app.state.genq.redis, settings)
    assert report.counts["dispatched"] == CAP
    on_queue = [await _on_queue(redis_client, settings.queue_name, j) for j in ids]
    assert on_queue == [True, True, False, False, False]
    again = await maintenance.enqueue_new_jobs(pool, api.app.state.genq.redis, settings)
    assert again.counts.get("dispatched", 0) == 0


CAPPED_PLAN = """
[[plans]]
name = "capped"
max_running = 2
"""


async def test_a_plans_cap_holds_with_the_setting_unset(
    settings: Settings, pool: Pool, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """GENQ_USER_MAX_RUNNING is 0 (no cap for whoever has none of their own), but a plan has
    one: its users' jobs past it wait, /v1/me shows it, and other users' jobs all go."""
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(CAPPED_PLAN)
    async with pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))
    configured = settings.model_copy(update={"user_max_running": 0, "plans_file": plans_file})
    async with running_app(configured) as (app, client):
        api = Api(app, client, configured, pool)
        capped, free = await api.user(credits=10), await api.user(credits=10)
        r = await client.put(f"/v1/admin/users/{capped.id}/plan", json={"plan": "capped"},
                             headers=ADMIN)
        assert r.status_code == 200, r.text
        me = await client.get("/v1/me", headers=capped.headers)
        assert me.json()["max_running"] == 2
        mine = [await _submit(api, capped) for _ in range(4)]
        theirs = [await _submit(api, free) for _ in range(4)]
    queue = configured.queue_name
    assert [j["enqueued_at"] is not None for j in mine] == [True, True, False, False]
    assert [await _on_queue(redis_client, queue, j["id"]) for j in mine] == [
        True, True, False, False]
    assert all(j["enqueued_at"] is not None for j in theirs)
    assert all([await _on_queue(redis_client, queue, j["id"]) for j in theirs])
