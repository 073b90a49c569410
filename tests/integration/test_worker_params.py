"""The worker checks a job's stored params against its model's schema again before a provider
sees them: a job accepted before the model had its schema (or under an older one) fails and is
refunded instead of rendering what was never priced."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.db import Pool
from shared.settings import Settings
from tests.factories import (
    assert_invariants,
    assets_of,
    create_job,
    files_on_disk,
    job_row,
    ledger_kinds,
    local,
)
from worker.context import WorkerContext
from worker.main import run_generation


@pytest.fixture
async def wc(settings: Settings) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(settings)
    yield ctx
    await ctx.close()


async def test_a_stored_job_outside_the_schema_fails_and_is_refunded(
    pool: Pool, wc: WorkerContext
) -> None:
    # Written straight to the database, as a job queued before this schema existed was.
    job = await create_job(pool, model="local/sketch", num_outputs=2, credits=10,
                           params={"width": 4096, "height": 4096, "steps": 50})
    assert await run_generation({"genq": wc}, str(job.id)) == "failed"

    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == (
        "failed", "invalid_params", 0)
    assert row["error_message"] == (
        "The job's params do not match the model's params_schema: "
        "params.steps: is not an accepted parameter of this model; "
        "params.height: must be at most 2048; params.width: must be at most 2048")
    assert await assets_of(pool, job.id) == []
    assert files_on_disk(local(wc.stager.storage)) == set()
    assert await ledger_kinds(pool, job.user_id) == [
        ("grant", 10, 0), ("reserve", -2, 2), ("refund", 2, -2)]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (10, 0)


async def test_a_stored_job_inside_the_schema_runs(pool: Pool, wc: WorkerContext) -> None:
    job = await create_job(pool, model="local/sketch", num_outputs=1, credits=10,
                           params={"width": 64, "height": 32, "format": "webp"})
    assert await run_generation({"genq": wc}, str(job.id)) == "succeeded"
    assets = await assets_of(pool, job.id)
    assert [(a["mime_type"], a["width"], a["height"]) for a in assets] == [
        ("image/webp", 64, 32)]
