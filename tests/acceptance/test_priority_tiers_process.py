"""Priority tiers with a real worker process: a higher tier's jobs start before a lower tier's
queued ones, and the lower tier still finishes (no starvation). GENQ_USER_MAX_RUNNING is unset:
a plan with a tier is enough to turn the dispatch on, and nobody has a cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.settings import Settings
from tests.acceptance.test_fair_sharing_process import _rows, _submit, _worker
from tests.integration.api_support import ADMIN, Api, running_app

LOW_JOBS = 1000
HIGH_JOBS = 50
SLOTS = 10
PLANS = """
[[plans]]
name = "priority"
priority_tier = 1
"""


@pytest.fixture(name="tiered")
async def tiered_api(settings: Settings, pool: Pool, tmp_path: Path) -> AsyncIterator[Api]:
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(PLANS)
    async with pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))
    configured = settings.model_copy(update={"user_max_running": 0, "plans_file": plans_file})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


@pytest.mark.slow
async def test_a_higher_tier_starts_first_and_the_lower_still_finishes(
    tiered: Api, pool: Pool, settings: Settings, tmp_path: Path
) -> None:
    api = tiered
    low, high = await api.user(credits=LOW_JOBS), await api.user(credits=HIGH_JOBS)
    r = await api.client.put(f"/v1/admin/users/{high.id}/plan", json={"plan": "priority"},
                             headers=ADMIN)
    assert r.status_code == 200, r.text
    worker = _worker(settings, tmp_path, cap=0, slots=SLOTS, job_s=0.05,
                     plans_file=tmp_path / "plans.toml")
    try:
        await _submit(api, low, LOW_JOBS)
        deadline = time.monotonic() + 180
        while sum(r["status"] == "succeeded" for r in await _rows(pool, low)) < 2 * SLOTS:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.1)
        await _submit(api, high, HIGH_JOBS)
        while not all(r["status"] == "succeeded"
                      for r in await _rows(pool, low) + await _rows(pool, high)):
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
    lows, highs = await _rows(pool, low), await _rows(pool, high)
    submitted = min(r["created_at"] for r in highs)
    last_high = max(r["started_at"] for r in highs)
    waiting_low = [r for r in lows if r["started_at"] > submitted]
    # Hundreds of low jobs were still queued when the high ones came...
    assert len(waiting_low) > LOW_JOBS // 2
    # ...and went after them: while the 50 high jobs started, the worker took at most the low
    # jobs it had already fetched (one poll's worth of slots) and a few more per slot.
    low_meanwhile = [r for r in waiting_low if r["started_at"] < last_high]
    assert len(low_meanwhile) <= 2 * SLOTS, len(low_meanwhile)
    # No starvation: every low job finished too.
    assert all(r["status"] == "succeeded" for r in lows)
    print(f"\n{len(low_meanwhile)} low jobs started while the {HIGH_JOBS} high ones did")
