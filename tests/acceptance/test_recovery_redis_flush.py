"""Redis loses every queued job (FLUSHDB): the sweep puts them back and each runs, charged once.

Real processes: two ``genq scheduler`` (so the sweep also runs with a rival scheduler) and two
``genq worker``, on a Redis database of their own that this test flushes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime

from shared.db import Pool
from shared.queue import create_arq_pool, enqueue_generation
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.acceptance.recovery_support import (
    Processes,
    assert_accounts_balanced,
    assert_assets_on_disk,
    funded_jobs,
    process_env,
    settlements,
    wait_all_terminal,
)

JOBS = 500
ACCOUNTS = 5
CREDITS = 1000
DEADLINE_S = 60.0


async def test_500_jobs_lost_by_redis_all_finish_charged_once(
    pool: Pool, settings: Settings, private_redis_url: str, procs: Processes
) -> None:
    users, job_ids = await funded_jobs(pool, ACCOUNTS, JOBS // ACCOUNTS, CREDITS)

    redis = await create_arq_pool(private_redis_url)
    try:
        for job_id in job_ids:
            assert await enqueue_generation(redis, settings.queue_name, job_id)
        assert await redis.zcard(settings.queue_name) == JOBS
        await redis.flushdb()
        assert await redis.zcard(settings.queue_name) == 0
    finally:
        await redis.aclose()

    env = process_env(
        database_url=str(settings.database_url), redis_url=private_redis_url,
        data_dir=str(settings.data_dir), queue_name=settings.queue_name,
        log_format="json", db_pool_min_size="1", poll_delay_s="0.05",
        max_jobs="100", sweep_interval_s="1", requeue_after_s="0",
        lease_recovery_interval_s="1",
    )
    for i in range(2):
        procs.start(["scheduler"], env, f"scheduler{i}")
    for i in range(2):
        procs.start(["worker"], env, f"worker{i}")

    elapsed = await wait_all_terminal(pool, job_ids, procs, DEADLINE_S)
    print(f"\n{JOBS} jobs lost by Redis: all terminal {elapsed:.1f} s after the processes "
          f"started (incl. start-up)")

    rows = await pool.fetch(
        "SELECT status, count(*) AS n, max(attempt) AS max_attempt FROM generation_jobs"
        " WHERE id = ANY($1::uuid[]) GROUP BY status", job_ids,
    )
    assert [(r["status"], r["n"]) for r in rows] == [("succeeded", JOBS)], procs.tails()
    print(f"max attempt {rows[0]['max_attempt']}")

    settled = await settlements(pool, job_ids)
    assert len(settled) == JOBS
    for s in settled:
        # One reserve, one settlement (a full capture leaves nothing to refund).
        assert (s.reserves, s.captures, s.refunds) == (1, 1, 0), s
        assert s.status == "captured" and s.captured == s.amount == s.captured_in_ledger, s
    await assert_accounts_balanced(pool, users)
    captured = sum(s.captured for s in settled)
    balances = await pool.fetchval(
        "SELECT sum(balance) FROM credit_accounts WHERE user_id = ANY($1::uuid[])", users)
    assert balances == ACCOUNTS * CREDITS - captured
    await assert_assets_on_disk(pool, LocalStorage(settings.storage_root), job_ids)

    # Every task's summary line, from either scheduler (a run may have found the lock taken
    # by the other scheduler or by a worker's lease recovery: wait for a real one of each).
    deadline = time.monotonic() + 15
    while (missing := TASKS_RUN - set(_task_runs(procs)[0])) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not missing, f"the schedulers never ran {missing}\n{procs.tails()}"
    for p in procs.started:
        assert p.stop() == 0, p.output()[-3000:]
    runs, requeued = _task_runs(procs)
    for task, spans in runs.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            # A run's span is rebuilt from its log line, written just after the lock is let go:
            # allow that gap, far below how long a run of this task takes.
            assert start >= end - 0.05, f"{task} ran twice at once: {spans}"
    assert requeued >= JOBS
    print("scheduler task runs: " + ", ".join(f"{t}={len(s)}" for t, s in sorted(runs.items()))
          + f"; jobs requeued {requeued}")


TASKS_RUN = {"expire_assets", "requeue_lost_jobs", "recover_expired_leases",
             "settle_stale_reservations", "retire_old_jobs"}


def _task_runs(procs: Processes) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """(task -> [(start, end)] of every run that held the lock, jobs requeued in all)."""
    runs: dict[str, list[tuple[float, float]]] = {}
    requeued = 0
    for p in procs.started:
        if not p.name.startswith("scheduler"):
            continue
        for event in p.events():
            if event.get("event") != "maintenance_task":
                continue
            assert isinstance(event["duration_s"], float | int), event
            if event.get("skipped_locked"):
                continue
            end = datetime.fromisoformat(event["timestamp"]).timestamp()
            runs.setdefault(event["task"], []).append((end - event["duration_s"], end))
            requeued += int(event.get("requeued", 0))
    return runs, requeued
