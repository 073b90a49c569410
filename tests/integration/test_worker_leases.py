"""One worker's heartbeat renews every job it holds in one statement: each job still hears of
its own lost lease or cancel request, and a job whose row another transaction holds at a beat
is renewed at a later one, not taken for lost."""

from __future__ import annotations

import asyncio

from shared.db import Pool
from shared.settings import Settings
from tests.factories import NewJob, assert_invariants, create_job, job_row
from worker.context import WorkerContext
from worker.generation import process_job


async def _running(pool: Pool, *job_ids: object) -> None:
    for job_id in job_ids:
        while (await job_row(pool, job_id))["status"] != "running":  # type: ignore[arg-type]
            await asyncio.sleep(0.02)


async def _slow_worker(settings: Settings, latency_s: float) -> WorkerContext:
    """A worker whose local jobs take ``latency_s``, beating every 0.1 s."""
    return await WorkerContext.open(settings.model_copy(
        update={"local_latency_s": latency_s, "heartbeat_s": 0.1, "lease_s": 30.0}))


async def _run_one(pool: Pool, ctx: WorkerContext) -> tuple[NewJob, asyncio.Task[str]]:
    """A one-output job, running on ``ctx`` once this returns."""
    job = await create_job(pool, num_outputs=1, credits=1)
    run = asyncio.create_task(process_job(ctx, job.id))
    await _running(pool, job.id)
    return job, run


async def test_each_job_of_one_worker_hears_of_its_own_lease_and_cancel(
    pool: Pool, settings: Settings
) -> None:
    slow = await _slow_worker(settings, 3.0)
    other = await WorkerContext.open(settings.model_copy(update={"local_latency_s": 0.1}))
    try:
        taken, canceled, kept = [await create_job(pool, num_outputs=1, credits=1)
                                 for _ in range(3)]
        runs = {job.id: asyncio.create_task(process_job(slow, job.id))
                for job in (taken, canceled, kept)}
        await _running(pool, taken.id, canceled.id, kept.id)
        # The beats renew the leases of the jobs it holds.
        before = (await job_row(pool, kept.id))["lease_expires_at"]
        while (await job_row(pool, kept.id))["lease_expires_at"] == before:
            await asyncio.sleep(0.05)

        # Another worker takes one job over once its lease has run out.
        await pool.execute("UPDATE generation_jobs SET lease_expires_at = now() - interval '1 s'"
                           " WHERE id = $1", taken.id)
        assert await process_job(other, taken.id) == "succeeded"
        # The user cancels another.
        await pool.execute("UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1",
                           canceled.id)

        assert await asyncio.wait_for(runs[taken.id], 10) == "lease_lost"
        assert await asyncio.wait_for(runs[canceled.id], 10) == "canceled"
        assert await asyncio.wait_for(runs[kept.id], 10) == "succeeded"
    finally:
        await slow.close()
        await other.close()
    row = await job_row(pool, taken.id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    row = await job_row(pool, canceled.id)
    assert (row["status"], row["error_code"]) == ("canceled", "canceled")
    row = await job_row(pool, kept.id)
    assert (row["status"], row["attempt"]) == ("succeeded", 1)
    for job in (taken, canceled, kept):
        await assert_invariants(pool, job.user_id)


async def test_a_job_whose_row_is_busy_at_a_beat_keeps_running(
    pool: Pool, settings: Settings
) -> None:
    ctx = await _slow_worker(settings, 2.0)
    try:
        job, run = await _run_one(pool, ctx)
        started = (await job_row(pool, job.id))["lease_expires_at"]
        # Another transaction holds the job's row across several beats.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM generation_jobs WHERE id = $1 FOR NO KEY UPDATE",
                               job.id)
            await asyncio.sleep(0.5)
            assert not run.done()
        # Once the row is free, the next beat renews the lease again.
        while (await job_row(pool, job.id))["lease_expires_at"] == started:
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(run, 10) == "succeeded"
    finally:
        await ctx.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["attempt"], row["outputs_made"]) == ("succeeded", 1, 1)
    await assert_invariants(pool, job.user_id)


async def test_a_beat_in_flight_when_the_worker_stops_is_let_finish(
    pool: Pool, settings: Settings
) -> None:
    """Stopping the heartbeat while its statement waits lets the statement end (the lease is
    renewed) instead of cutting it short, and the worker's pools then close."""
    ctx = await _slow_worker(settings, 3.0)
    try:
        job, run = await _run_one(pool, ctx)
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            # The next beat's UPDATE waits behind this lock.
            await conn.execute("LOCK TABLE generation_jobs IN SHARE MODE")
            before = (await job_row(pool, job.id))["lease_expires_at"]
            while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%lease_expires_at%' AND pid <> pg_backend_pid()"
            ):
                await asyncio.sleep(0.02)
            stopping = asyncio.create_task(ctx.leases.aclose())
            await asyncio.sleep(0.3)
            assert not stopping.done()  # it waits for the beat, which waits for the lock
            await tx.commit()
        await asyncio.wait_for(stopping, 10)
        # The beat ended and renewed the lease: it was not cancelled.
        assert (await job_row(pool, job.id))["lease_expires_at"] > before
        assert await asyncio.wait_for(run, 10) == "succeeded"
    finally:
        await asyncio.wait_for(ctx.close(), 30)
    assert (await job_row(pool, job.id))["status"] == "succeeded"
    await assert_invariants(pool, job.user_id)


async def test_closing_the_worker_cuts_a_connection_that_never_comes_back(
    pool: Pool, settings: Settings
) -> None:
    ctx = await WorkerContext.open(settings)
    stuck = await ctx.pool.acquire()  # never released, as by a task that leaked it
    assert await stuck.fetchval("SELECT 1") == 1
    pid = stuck.get_server_pid()
    await asyncio.wait_for(ctx.close(pool_close_s=0.5), 10)

    async def gone() -> None:
        while await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(gone(), 10)  # PostgreSQL saw that backend go
