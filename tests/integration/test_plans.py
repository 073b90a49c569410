"""Plans: the catalog synced into the database, an admin assigning one, GET /v1/me showing it,
and the scheduler's periodic grants: exactly one per user and period however many runs go at
once, and only the current period after downtime."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.settings import Settings
from tests.factories import funded_user
from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401
from worker import maintenance

PLANS = """
[[plans]]
name = "pro"
credits_per_period = 100
period = "day"
priority_tier = 1
max_running = 8
submits_per_minute = 120

[[plans]]
name = "studio"
credits_per_period = 5000
period = "month"
priority_tier = 2
"""


@pytest.fixture(autouse=True)
async def plans_synced(pool: Pool, tmp_path: Path) -> None:
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(PLANS)
    async with pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))


async def test_me_shows_the_default_plan_and_an_admin_assigns_another(api: Api) -> None:
    user = await api.user(credits=7)
    r = await api.client.get("/v1/me", headers=user.headers)
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["id"] == str(user.id)
    assert me["plan"]["name"] == "free"
    assert me["plan"]["credits_per_period"] == 0
    assert me["credits"] == {"balance": 7, "reserved": 0}

    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": "pro"},
                             headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["plan"] == {
        "name": "pro", "description": "", "credits_per_period": 100, "period": "day",
        "priority_tier": 1, "max_running": 8, "submits_per_minute": 120,
        "storage_quota_bytes": None,
    }
    me = (await api.client.get("/v1/me", headers=user.headers)).json()
    assert me["plan"]["name"] == "pro"
    assert me["max_running"] == 8

    # The user's own cap over the plan's; left out, it stays; null, the plan's again.
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan",
                             json={"plan": "studio", "max_running": 3}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["plan"]["name"], r.json()["max_running"]) == ("studio", 3)
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": "pro"},
                             headers=ADMIN)
    assert r.json()["max_running"] == 3
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan",
                             json={"plan": "pro", "max_running": None}, headers=ADMIN)
    assert r.json()["max_running"] == 8


async def test_bad_plan_assignments_are_refused_and_change_nothing(api: Api) -> None:
    user = await api.user()
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": "platinum"},
                             headers=ADMIN)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["details"][0]["field"] == "plan"
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": 3},
                             headers=ADMIN)
    assert r.status_code == 422
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan",
                             json={"plan": "pro", "max_running": 0}, headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "max_running"
    r = await api.client.put(f"/v1/admin/users/{uuid.uuid4()}/plan", json={"plan": "pro"},
                             headers=ADMIN)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "user_not_found"
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": "pro"},
                             headers=user.headers)
    assert r.status_code == 401
    assert await api.pool.fetchval("SELECT plan FROM users WHERE id = $1", user.id) == "free"


async def _plan_grants(pool: Pool, user_id: uuid.UUID) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT idempotency_key, amount FROM credit_ledger WHERE user_id = $1 "
        "AND kind = 'grant' AND idempotency_key LIKE 'plan:%' ORDER BY id", user_id)
    return [(r["idempotency_key"], r["amount"]) for r in rows]


async def test_each_user_gets_one_grant_per_period(pool: Pool, settings: Settings) -> None:
    pro = [await funded_user(pool, 0) for _ in range(30)]
    studio = [await funded_user(pool, 0) for _ in range(5)]
    free = await funded_user(pool, 0)
    await pool.execute("UPDATE users SET plan = 'pro' WHERE id = ANY($1::uuid[])", pro)
    await pool.execute("UPDATE users SET plan = 'studio' WHERE id = ANY($1::uuid[])", studio)
    small = settings.model_copy(update={"cleanup_batch_size": 4})
    day1 = datetime(2026, 3, 31, 23, 59, 50, tzinfo=UTC)

    # Two runs at once (a run killed in the middle, with real scheduler processes, is
    # tests/acceptance/test_plan_grants_process.py).
    await asyncio.gather(
        maintenance.grant_plan_credits(pool, small, now=day1),
        maintenance.grant_plan_credits(pool, small, now=day1),
    )
    for user in pro:
        assert await _plan_grants(pool, user) == [("plan:pro:2026-03-31", 100)]
    for user in studio:
        assert await _plan_grants(pool, user) == [("plan:studio:2026-03-01", 5000)]
    assert await _plan_grants(pool, free) == []

    # The clock crosses midnight, and the month: a new day for pro, a new month for studio.
    day2 = day1 + timedelta(seconds=20)
    report = await maintenance.grant_plan_credits(pool, small, now=day2)
    assert report.counts["granted"] == len(pro) + len(studio)
    again = await maintenance.grant_plan_credits(pool, small, now=day2 + timedelta(hours=3))
    assert again.counts["granted"] == 0
    for user in pro:
        assert await _plan_grants(pool, user) == [("plan:pro:2026-03-31", 100),
                                                  ("plan:pro:2026-04-01", 100)]
        balance = await pool.fetchval(
            "SELECT balance FROM credit_accounts WHERE user_id = $1", user)
        assert balance == 200

    # Down for five days: coming back grants the current day once, not the days missed.
    back = day2 + timedelta(days=5)
    await maintenance.grant_plan_credits(pool, small, now=back)
    await maintenance.grant_plan_credits(pool, small, now=back)
    for user in pro:
        assert [k for k, _ in await _plan_grants(pool, user)] == [
            "plan:pro:2026-03-31", "plan:pro:2026-04-01", "plan:pro:2026-04-06"]
    for user in studio:
        assert [k for k, _ in await _plan_grants(pool, user)] == [
            "plan:studio:2026-03-01", "plan:studio:2026-04-01"]
