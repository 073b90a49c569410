"""Maintenance tasks against real PostgreSQL, Redis and files on disk."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from shared import ledger
from shared.db import Pool, create_pool
from shared.queue import requeue_generation
from shared.settings import Settings
from shared.storage import LocalStorage, asset_key
from shared.storage.s3 import S3Storage
from tests.factories import (
    files_on_disk,
    funded_user,
    queued_job,
    reserve,
    stored_assets,
    stored_objects,
)
from tests.s3_support import S3Server
from worker import maintenance
from worker.scheduler import POOL_MAX_SIZE, TASKS, exclusive, run_task


def _storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


async def _asset_keys(pool: Pool) -> set[str]:
    return {r["storage_key"] for r in await pool.fetch(
        "SELECT storage_key FROM workspace_assets")}


async def test_expire_10000_assets_with_two_cleanups_at_once(pool: Pool, tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    user = await funded_user(pool, 1000)
    # Mixed expiry: long expired, just expired, expiring soon, fresh.
    pattern = [-7 * 86400.0, -1.0, 60.0, 7 * 86400.0]
    expected_kept: set[str] = set()
    for _ in range(20):
        job = await queued_job(pool, user)
        keys = await stored_assets(
            pool, storage, user, job, [pattern[i % 4] for i in range(500)]
        )
        expected_kept |= {k for i, k in enumerate(keys) if i % 4 >= 2}
    assert await pool.fetchval("SELECT count(*) FROM workspace_assets") == 10_000

    reports = await asyncio.gather(
        maintenance.expire_assets(pool, storage, 200),
        maintenance.expire_assets(pool, storage, 200),
    )

    assert sum(r.counts.get("rows_deleted", 0) for r in reports) == 5000
    assert sum(r.counts.get("files_deleted", 0) for r in reports) == 5000
    # A file deleted twice would show up here as "already gone".
    assert sum(r.counts.get("files_already_gone", 0) for r in reports) == 0
    assert await _asset_keys(pool) == expected_kept
    assert files_on_disk(storage) == expected_kept

    again = await maintenance.expire_assets(pool, storage, 200)
    assert again.counts == {}


async def test_expired_row_whose_file_is_gone_is_still_deleted(
    pool: Pool, tmp_path: Path
) -> None:
    storage = _storage(tmp_path)
    user = await funded_user(pool, 10)
    job = await queued_job(pool, user)
    keys = await stored_assets(pool, storage, user, job, [-5.0, -5.0])
    storage.delete_sync(keys[0])
    report = await maintenance.expire_assets(pool, storage, 10)
    assert report.counts == {"rows_deleted": 2, "files_deleted": 1, "files_already_gone": 1}
    assert await _asset_keys(pool) == set()


async def test_orphan_files_are_swept_after_a_grace_period(pool: Pool, tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    user = await funded_user(pool, 10)
    job = await queued_job(pool, user)
    (kept,) = await stored_assets(pool, storage, user, job, [3600.0])
    old_orphan = asset_key(user, job, 7, "png")
    young_orphan = asset_key(user, job, 8, "png")
    storage.write_bytes(old_orphan, b"x")
    storage.write_bytes(young_orphan, b"y")
    partial = storage.path(asset_key(user, job, 9, "png")).with_name(".9.png.abc.part")
    partial.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for path in (storage.path(old_orphan), storage.path(kept), partial):
        os.utime(path, (two_hours_ago, two_hours_ago))

    report = await maintenance.sweep_orphan_files(pool, storage, 100)

    assert report.counts["orphans_deleted"] == 2
    assert report.counts["partial_files_deleted"] == 1
    assert files_on_disk(storage) == {kept, young_orphan}


async def test_requeue_jobs_redis_lost(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    user = await funded_user(pool, 100)
    lost = [await queued_job(pool, user, created_ago_s=600) for _ in range(30)]
    fresh = await queued_job(pool, user)
    # A stale result from an earlier delivery must not block the new enqueue.
    await redis_client.set(f"arq:result:{lost[0]}", b"old")

    report = await maintenance.requeue_lost_jobs(pool, arq_redis, settings)

    assert report.counts == {"requeued": 30}
    queued = {m.decode() for m in await redis_client.zrange(settings.queue_name, 0, -1)}
    assert queued == {str(j) for j in lost}
    assert str(fresh) not in queued
    for job in lost:
        assert await redis_client.exists(f"arq:job:{job}")
    # They were just enqueued: a second sweep right away has nothing to do.
    assert (await maintenance.requeue_lost_jobs(pool, arq_redis, settings)).counts == {}


async def test_requeue_skips_jobs_still_in_redis(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    user = await funded_user(pool, 100)
    job = await queued_job(pool, user, created_ago_s=600)
    assert await requeue_generation(arq_redis, settings.queue_name, job)
    await pool.execute(
        "UPDATE generation_jobs SET enqueued_at = now() - interval '1 hour' WHERE id = $1", job
    )
    report = await maintenance.requeue_lost_jobs(pool, arq_redis, settings)
    assert report.counts == {"still_in_redis": 1}
    assert await redis_client.zcard(settings.queue_name) == 1


async def _expire_lease(pool: Pool, job: uuid.UUID, attempt: int) -> None:
    await pool.execute(
        "UPDATE generation_jobs SET status = 'running', attempt = $2, lease_owner = 'dead',"
        " lease_expires_at = now() - interval '1 second', started_at = now() WHERE id = $1",
        job, attempt,
    )


async def test_expired_leases_are_retried_or_failed_and_refunded(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    user = await funded_user(pool, 100)
    retry = await queued_job(pool, user, num_outputs=2)
    exhausted = await queued_job(pool, user, num_outputs=3)
    healthy = await queued_job(pool, user)
    await _expire_lease(pool, retry, attempt=1)
    await _expire_lease(pool, exhausted, attempt=3)
    await pool.execute(
        "UPDATE generation_jobs SET status = 'running', attempt = 1, lease_owner = 'alive',"
        " lease_expires_at = now() + interval '1 minute', started_at = now() WHERE id = $1",
        healthy,
    )
    before = await ledger.get_account(pool, user)

    report = await maintenance.recover_expired_leases(pool, arq_redis, settings)

    # credits_refunded: what the scheduler's metrics add to genq_credits_refunded_total.
    assert report.counts == {"retried": 1, "failed_refunded": 1, "credits_refunded": 3}
    rows = {r["id"]: r for r in await pool.fetch(
        "SELECT id, status, error_code, lease_owner FROM generation_jobs")}
    assert rows[retry]["status"] == "queued"
    assert rows[retry]["lease_owner"] is None
    assert rows[exhausted]["status"] == "failed"
    assert rows[exhausted]["error_code"] == "worker_lost"
    assert rows[healthy]["status"] == "running"
    assert await redis_client.exists(f"arq:job:{retry}")
    after = await ledger.get_account(pool, user)
    # The exhausted job's 3 credits came back; the others are still held.
    assert after.balance == before.balance + 3
    assert after.reserved == before.reserved - 3


async def test_stale_reservations_fail_the_job_and_refund(pool: Pool) -> None:
    user = await funded_user(pool, 100)
    stale = await queued_job(pool, user, num_outputs=4, reservation_ttl_s=-1)
    current = await queued_job(pool, user, num_outputs=2)
    from datetime import UTC, datetime, timedelta

    orphan = await reserve(
        pool, user, 5, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )

    report = await maintenance.settle_stale_reservations(pool, 100)

    assert report.counts == {"jobs_failed": 1, "refunded": 2, "credits_refunded": 4 + 5}
    status = await pool.fetchrow(
        "SELECT status, error_code FROM generation_jobs WHERE id = $1", stale)
    assert status is not None
    assert (status["status"], status["error_code"]) == ("failed", "reservation_expired")
    assert await pool.fetchval(
        "SELECT status FROM generation_jobs WHERE id = $1", current) == "queued"
    account = await ledger.get_account(pool, user)
    assert (account.balance, account.reserved) == (98, 2)
    settled = await pool.fetchval(
        "SELECT status FROM credit_reservations WHERE id = $1", orphan.id)
    assert settled == "refunded"


@pytest.mark.parametrize("action", ["archive", "delete"])
async def test_retire_old_terminal_jobs(pool: Pool, settings: Settings, action: str) -> None:
    settings = settings.model_copy(update={"job_retention_action": action})
    user = await funded_user(pool, 100)
    old, with_assets, recent = [await queued_job(pool, user) for _ in range(3)]
    await pool.execute(
        "UPDATE generation_jobs SET status = 'failed', finished_at = now() - make_interval("
        "days => CASE WHEN id = $3 THEN 1 ELSE 40 END) WHERE id = ANY($1::uuid[]) OR id = $2"
        " OR id = $3",
        [old], with_assets, recent,
    )
    await stored_assets(pool, LocalStorage(settings.storage_root), user, with_assets, [3600.0])

    report = await maintenance.retire_old_jobs(pool, settings)

    assert report.counts == {("archived" if action == "archive" else "deleted"): 1}
    remaining = {r["id"] for r in await pool.fetch("SELECT id FROM generation_jobs")}
    assert remaining == {with_assets, recent}
    archived = await pool.fetch("SELECT id, job FROM generation_jobs_archive")
    if action == "archive":
        assert [r["id"] for r in archived] == [old]
        assert archived[0]["job"]["status"] == "failed"
    else:
        assert archived == []


async def test_one_run_at_a_time(pool: Pool, settings: Settings, arq_redis: ArqRedis) -> None:
    async with exclusive(pool, "expire-assets") as got:
        assert got
        report = await run_task("expire-assets", pool, arq_redis, settings)
    assert report.counts == {"skipped_locked": 1}
    report = await run_task("expire-assets", pool, arq_redis, settings)
    assert "skipped_locked" not in report.counts


async def test_expired_lease_frees_a_dead_workers_arq_job(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    user = await funded_user(pool, 100)
    job = await queued_job(pool, user)
    assert await requeue_generation(arq_redis, settings.queue_name, job)
    # What a SIGKILLed arq worker leaves: the job key, its queue entry, its in-progress key.
    await redis_client.set(f"arq:in-progress:{job}", b"1", px=600_000)
    await redis_client.set(f"arq:retry:{job}", b"3")
    await _expire_lease(pool, job, attempt=1)
    # Without force, a job arq holds is left alone.
    assert not await requeue_generation(arq_redis, settings.queue_name, job)

    report = await maintenance.recover_expired_leases(pool, arq_redis, settings)

    assert report.counts == {"retried": 1}
    assert not await redis_client.exists(f"arq:in-progress:{job}")
    assert not await redis_client.exists(f"arq:retry:{job}")
    assert await redis_client.zscore(settings.queue_name, str(job)) is not None
    assert await pool.fetchval("SELECT status FROM generation_jobs WHERE id = $1", job) == "queued"


async def test_every_task_at_once_fits_the_scheduler_pool(
    database_url: str, settings: Settings, arq_redis: ArqRedis
) -> None:
    # A scheduler starts every due task at the same tick; each run holds a connection for its
    # lock and needs another for its work. A pool too small for that deadlocks for good.
    pool = await create_pool(database_url, min_size=1, max_size=POOL_MAX_SIZE)
    try:
        async with asyncio.timeout(10):
            reports = await asyncio.gather(
                *(run_task(name, pool, arq_redis, settings) for name in TASKS)
            )
    finally:
        await pool.close()
    assert [r.task for r in reports] == [name.replace("-", "_") for name in TASKS]
    assert not any("skipped_locked" in r.counts for r in reports)


async def test_queued_job_a_dead_worker_picked_up_is_requeued(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"requeue_after_s": 1.0, "lease_s": 60.0})
    user = await funded_user(pool, 100)
    dead, claiming = [await queued_job(pool, user) for _ in range(2)]
    for job, waited_s in ((dead, 3600.0), (claiming, 10.0)):
        assert await requeue_generation(arq_redis, settings.queue_name, job)
        # A worker took it from arq and has not claimed it in Postgres yet: still queued there,
        # in progress in arq (for its whole job timeout).
        await redis_client.set(f"arq:in-progress:{job}", b"1", px=600_000)
        await pool.execute(
            "UPDATE generation_jobs SET enqueued_at = now() - make_interval(secs => $2)"
            " WHERE id = $1", job, waited_s,
        )

    report = await maintenance.requeue_lost_jobs(pool, arq_redis, settings)

    # A lease after it was enqueued, its worker is dead: freed. Within a lease, its worker may
    # be claiming it right now: left alone.
    assert report.counts == {"requeued": 1, "still_in_redis": 1}
    assert not await redis_client.exists(f"arq:in-progress:{dead}")
    assert await redis_client.exists(f"arq:in-progress:{claiming}")
    for job in (dead, claiming):
        assert await redis_client.zscore(settings.queue_name, str(job)) is not None
        assert await redis_client.exists(f"arq:job:{job}")


async def test_requeue_with_no_wait_handles_each_lost_job_once_per_run(
    pool: Pool, settings: Settings, arq_redis: ArqRedis, redis_client: aioredis.Redis
) -> None:
    # With GENQ_REQUEUE_AFTER_S=0 a job requeued by this run is "lost" again a moment later:
    # the run must not pick it up again (and, with a full batch of such jobs, never end).
    settings = settings.model_copy(update={"requeue_after_s": 0.0, "cleanup_batch_size": 10})
    user = await funded_user(pool, 100)
    jobs = [await queued_job(pool, user) for _ in range(25)]

    async with asyncio.timeout(10):
        report = await maintenance.requeue_lost_jobs(pool, arq_redis, settings)

    assert report.counts == {"requeued": 25}
    queued = {m.decode() for m in await redis_client.zrange(settings.queue_name, 0, -1)}
    assert queued == {str(j) for j in jobs}


async def test_expiry_and_orphan_sweep_on_s3(
    pool: Pool, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same tasks on an S3 bucket: expired assets lose object and row; an object no row
    claims goes once it is older than the grace period (all are, with a negative grace)."""
    for name, value in s3_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    storage = S3Storage(bucket, "p", endpoint_url=s3_server.endpoint_url, region="us-east-1")
    user = await funded_user(pool, 10)
    job = await queued_job(pool, user)
    expired, kept = await stored_objects(pool, storage, user, job, [-5.0, 3600.0])
    orphan = asset_key(user, job, 7, "png")
    await storage.put_bytes(orphan, b"orphan")
    assert len(s3_server.keys(bucket)) == 3 and f"p/{expired}" in s3_server.keys(bucket)

    report = await maintenance.expire_assets(pool, storage, 10)
    assert (report.counts["rows_deleted"], report.counts["files_deleted"]) == (1, 1)
    assert await _asset_keys(pool) == {kept}
    assert s3_server.keys(bucket) == sorted([f"p/{kept}", f"p/{orphan}"])

    young = await maintenance.sweep_orphan_files(pool, storage, 100)
    assert "orphans_deleted" not in young.counts  # within the grace period
    swept = await maintenance.sweep_orphan_files(pool, storage, 100, grace_s=-60)
    assert swept.counts["orphans_deleted"] == 1
    assert s3_server.keys(bucket) == [f"p/{kept}"]
