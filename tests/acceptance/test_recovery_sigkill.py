"""Both workers SIGKILLed while 200 jobs run: fresh workers and the sweep finish every job,
charged once, with all its outputs, within lease + sweep period + processing time.
"""

from __future__ import annotations

import asyncio
import time

from shared.db import Pool
from shared.queue import create_arq_pool, enqueue_generation
from shared.settings import Settings
from shared.storage import TMP_SUFFIX, LocalStorage
from tests.acceptance.recovery_support import (
    Processes,
    assert_accounts_balanced,
    assert_assets_on_disk,
    funded_jobs,
    process_env,
    settlements,
    status_counts,
    wait_all_terminal,
)
from tests.factories import files_on_disk

JOBS = 200
ACCOUNTS = 4
CREDITS = 1000
LEASE_S = 2.0
SWEEP_S = 1  # the scheduler's interval, and each worker's own lease-recovery interval
LATENCY_S = 1.5  # the local provider's simulated work per job
# Lease + sweep + processing is 4.5 s; fresh processes take a few seconds to start on a slow
# machine. A job stuck behind a dead worker's arq in-progress key would take minutes (arq's
# timeout for a job here is 390 s), so this bound still tells "recovered" from "stuck".
RECOVERY_BOUND_S = 25.0
KILL_WHEN_RUNNING = 150


async def test_workers_sigkilled_while_200_jobs_run(
    pool: Pool, settings: Settings, private_redis_url: str, procs: Processes
) -> None:
    users, job_ids = await funded_jobs(pool, ACCOUNTS, JOBS // ACCOUNTS, CREDITS)
    redis = await create_arq_pool(private_redis_url)
    try:
        for job_id in job_ids:
            assert await enqueue_generation(redis, settings.queue_name, job_id)
    finally:
        await redis.aclose()

    env = process_env(
        database_url=str(settings.database_url), redis_url=private_redis_url,
        data_dir=str(settings.data_dir), queue_name=settings.queue_name,
        log_format="json", db_pool_min_size="1", poll_delay_s="0.05",
        max_jobs=str(JOBS), lease_s=str(LEASE_S), heartbeat_s="0.5",
        local_latency_s=str(LATENCY_S), lease_recovery_interval_s=str(SWEEP_S),
        sweep_interval_s=str(SWEEP_S), requeue_after_s="5", shutdown_grace_s="1",
    )
    doomed = [procs.start(["worker"], env, f"doomed{i}") for i in range(2)]

    deadline = time.monotonic() + 30
    while (counts := await status_counts(pool, job_ids)).get("running", 0) < KILL_WHEN_RUNNING:
        procs.assert_alive()
        assert time.monotonic() < deadline, f"jobs never got running: {counts}\n{procs.tails()}"
        await asyncio.sleep(0.02)
    for worker in doomed:
        worker.kill_group()
    killed_at = time.monotonic()
    at_kill = await status_counts(pool, job_ids)
    print(f"\nat SIGKILL: {at_kill}")
    assert at_kill.get("running", 0) >= KILL_WHEN_RUNNING

    procs.start(["scheduler"], env, "scheduler")
    for i in range(2):
        procs.start(["worker"], env, f"fresh{i}")
    await wait_all_terminal(pool, job_ids, procs, RECOVERY_BOUND_S)
    recovered_s = time.monotonic() - killed_at
    print(f"all {JOBS} terminal {recovered_s:.1f} s after SIGKILL, fresh processes started "
          f"at once (bound {RECOVERY_BOUND_S:.0f} s; lease {LEASE_S:g} + sweep {SWEEP_S} + "
          f"work {LATENCY_S:g} s)")

    rows = await pool.fetch(
        "SELECT status, attempt, count(*) AS n FROM generation_jobs"
        " WHERE id = ANY($1::uuid[]) GROUP BY status, attempt ORDER BY status, attempt", job_ids,
    )
    print("status, attempt -> jobs: "
          + ", ".join(f"{r['status']},{r['attempt']}->{r['n']}" for r in rows))
    assert {r["status"] for r in rows} == {"succeeded"}, procs.tails()
    # Some jobs were taken back from the dead workers and run again.
    assert max(r["attempt"] for r in rows) >= 2

    settled = await settlements(pool, job_ids)
    assert len(settled) == JOBS
    for s in settled:
        # Never a second capture; every reservation settled once, for what was made.
        assert (s.reserves, s.captures, s.refunds) == (1, 1, 0), s
        assert s.status == "captured" and s.captured == s.amount == s.captured_in_ledger, s
    await assert_accounts_balanced(pool, users)

    storage = LocalStorage(settings.storage_root)
    await assert_assets_on_disk(pool, storage, job_ids)
    on_disk = files_on_disk(storage)
    partial = {k for k in on_disk if k.endswith(TMP_SUFFIX)}
    rows_keys = {r["storage_key"] for r in await pool.fetch(
        "SELECT storage_key FROM workspace_assets")}
    assert len(rows_keys) == sum(1 + i % 2 for i in range(JOBS // ACCOUNTS)) * ACCOUNTS
    # Every output has its thumbnail, as a row and a file.
    variant_keys = {r["storage_key"] for r in await pool.fetch(
        "SELECT storage_key FROM asset_variants WHERE kind = 'thumb'")}
    assert variant_keys == {k.rsplit(".", 1)[0] + ".thumb.webp" for k in rows_keys}
    # A killed attempt's finished file sits under the same key its rerun wrote: no file
    # without a row, only half-written temp files (the orphan sweep removes those later).
    assert on_disk - partial == rows_keys | variant_keys
    print(f"partial files left by the killed workers: {len(partial)}")

    for p in procs.started:
        if p.proc.poll() is None:
            assert p.stop() == 0, p.output()[-3000:]
