"""Maintenance tasks: expire workspace assets, purge the library's trash, recover lost and stuck
jobs, settle stale reservations, retire old jobs.

Postgres is the source of truth: each task reads what must be true there and repairs Redis and
storage to match. Every task works in batches locked with ``FOR UPDATE SKIP LOCKED``, so two runs
at once split the work, and a run killed half-way leaves nothing that the next run cannot finish.
Every task returns a :class:`TaskReport`; ``worker.scheduler.run_task`` logs it as one
structured line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from shared import ledger, plans
from shared.db import Connection, Pool
from shared.dispatch import dispatch
from shared.logging import get_logger
from shared.queue import enqueue_generations, requeue_generation
from shared.settings import Settings
from shared.storage import TMP_SUFFIX, Storage
from shared.types import ACTIVE_STATUSES
from sql import queries

log = get_logger(__name__)

# Files younger than this are never treated as orphans: a worker may be between writing the file
# and inserting its row.
ORPHAN_GRACE_S = 3600.0
# A job accepted this recently may still be in the intake's hands (its enqueue not yet tried or
# recorded): the prompt sweep leaves it alone. Enqueueing it anyway would be harmless (arq
# refuses an id it holds), only wasted.
NEW_JOB_GRACE_S = 1.0
# Users per dispatch statement of the sweep (one transaction, one advisory lock per user).
DISPATCH_USERS = 50
# The count of a report that is credits given back, not things done (the scheduler's metrics
# add it to the refunded credits).
CREDITS_REFUNDED = "credits_refunded"


@dataclass
class TaskReport:
    """What one run of a task did."""

    task: str
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self.counts[name] = self.counts.get(name, 0) + n

    def summary(self) -> str:
        """One human line: ``task: a=1 b=2 in 0.12s``."""
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing to do"
        return f"{self.task}: {counts} in {self.duration_s:.2f}s"


def _timed(
    name: str,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[TaskReport]]]:
    def wrap(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[TaskReport]]:
        async def run(*args: object, **kwargs: object) -> TaskReport:
            report = TaskReport(name)
            started = time.perf_counter()
            try:
                await fn(report, *args, **kwargs)
            finally:
                report.duration_s = time.perf_counter() - started
            return report

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


async def _delete_objects(storage: Storage, keys: list[str]) -> tuple[int, int]:
    removed = missing = 0
    for key in keys:
        if await storage.delete(key):
            removed += 1
        else:
            missing += 1
    return removed, missing


@_timed("expire_assets")
async def expire_assets(
    report: TaskReport, pool: Pool, storage: Storage, batch_size: int
) -> None:
    """Delete expired workspace assets, stored objects first (their variants' too) and then rows
    (the variant rows by cascade), one locked batch at a time.

    The object goes before its row, inside the transaction that deletes the row: a crash leaves
    an expired row whose object is gone (the next run deletes it; expired rows are never
    served), and never an object without a row.
    """
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(queries["lock_expired_assets"], batch_size)
            if not rows:
                return
            keys = [r["storage_key"] for r in rows]
            variant_keys = [k for r in rows for k in r["variant_keys"]]
            removed, missing = await _delete_objects(storage, keys + variant_keys)
            await conn.execute(queries["delete_assets"], [r["id"] for r in rows])
        report.add("rows_deleted", len(rows))
        report.add("files_deleted", removed)
        report.add("files_already_gone", missing)
        if variant_keys:
            report.add("variant_files", len(variant_keys))
        if len(rows) < batch_size:
            return


@_timed("purge_trash")
async def purge_trash(
    report: TaskReport, pool: Pool, storage: Storage, trash_ttl_s: float, batch_size: int
) -> None:
    """Purge library items deleted more than ``trash_ttl_s`` ago: rows first (their variant
    rows by cascade), committed, then their files and variants' files, one locked batch at a
    time.

    The rows go before the files: a crash in between leaves files no row points at, which the
    orphan sweep deletes; never a row whose file is gone (a trashed item stays restorable, with
    its bytes, until its row is purged).
    """
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(queries["lock_trash_past_ttl"], trash_ttl_s, batch_size)
            if not rows:
                return
            await conn.execute(queries["delete_library_items"], [r["id"] for r in rows])
        keys = [r["storage_key"] for r in rows] + [k for r in rows for k in r["variant_keys"]]
        removed, missing = await _delete_objects(storage, keys)
        report.add("rows_deleted", len(rows))
        report.add("files_deleted", removed)
        report.add("files_already_gone", missing)
        if len(rows) < batch_size:
            return


@_timed("sweep_orphan_files")
async def sweep_orphan_files(
    report: TaskReport, pool: Pool, storage: Storage, batch_size: int,
    grace_s: float = ORPHAN_GRACE_S,
) -> None:
    """Delete stored objects that no asset or asset variant row points at (a crash between
    write and insert)."""
    older_than = datetime.fromtimestamp(time.time() - grace_s, UTC)
    batch: list[str] = []
    async for info in storage.list():
        if info.last_modified >= older_than:
            continue
        report.add("files_scanned")
        batch.append(info.key)
        if len(batch) >= batch_size:
            await _sweep_batch(report, pool, storage, batch)
            batch = []
    if batch:
        await _sweep_batch(report, pool, storage, batch)


async def _sweep_batch(report: TaskReport, pool: Pool, storage: Storage, keys: list[str]) -> None:
    known = {r["storage_key"] for r in await pool.fetch(queries["known_storage_keys"], keys)}
    orphans = [k for k in keys if k not in known]
    if orphans:
        removed, _ = await _delete_objects(storage, orphans)
        report.add("orphans_deleted", removed)
        report.add("partial_files_deleted", sum(k.endswith(TMP_SUFFIX) for k in orphans))


@_timed("enqueue_new_jobs")
async def enqueue_new_jobs(
    report: TaskReport, pool: Pool, redis: ArqRedis, settings: Settings
) -> None:
    """Enqueue ``queued`` jobs that were never enqueued: the intake accepted them while Redis
    was unreachable (``enqueued_at`` NULL). Cheap, so it runs every few seconds, and such jobs
    start soon after Redis is back instead of waiting for :func:`requeue_lost_jobs`.

    With the dispatch on (running caps or tiers) the same jobs are the ones waiting for a
    place: each of their users gets a dispatch instead, which enqueues as many as the cap
    leaves room for."""
    if plans.dispatch_on(settings):
        await _dispatch_waiting(report, pool, redis, settings)
        return
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                queries["unenqueued_jobs"], NEW_JOB_GRACE_S, settings.cleanup_batch_size
            )
            if not rows:
                return
            ids = [r["id"] for r in rows]
            try:
                added = await enqueue_generations(redis, settings.queue_name, ids)
            except RedisError as exc:
                report.add("redis_errors")
                log.warning("enqueue_new_redis_error", error=str(exc))
                return
            report.add("enqueued", sum(added))
            if len(added) > sum(added):
                report.add("already_in_redis", len(added) - sum(added))
            await conn.execute(queries["mark_enqueued"], ids)
        if len(rows) < settings.cleanup_batch_size:
            return


async def _dispatch_waiting(
    report: TaskReport, pool: Pool, redis: ArqRedis, settings: Settings
) -> None:
    users = [r["user_id"] for r in await pool.fetch(
        queries["waiting_users"], NEW_JOB_GRACE_S, settings.cleanup_batch_size)]
    for start in range(0, len(users), DISPATCH_USERS):
        done = await dispatch(pool, redis, settings.queue_name,
                              users[start:start + DISPATCH_USERS], settings.user_max_running)
        report.add("dispatched", len(done))


# The weight of a new sample in the queue's smoothed speed (the rest is the previous speed).
QUEUE_SPEED_WEIGHT = 0.3


@_timed("measure_queue")
async def measure_queue(report: TaskReport, pool: Pool) -> None:
    """Sample how fast the head of the queue moves (queue numbers per second, smoothed), which
    a queued job's ``queue.eta_s`` divides its position by. A queue with nothing queued at
    either sample tells nothing about its speed: the previous one is kept."""
    head = await pool.fetchrow(queries["queue_head"])
    assert head is not None  # one row, always
    prev = await pool.fetchrow(queries["get_queue_stats"])
    speed = None if prev is None else prev["head_per_s"]
    if prev is not None and head["sampled_at"] > prev["sampled_at"]:
        moved = head["head_seq"] - prev["head_seq"]
        if moved > 0 or head["queued"]:
            sample = moved / (head["sampled_at"] - prev["sampled_at"]).total_seconds()
            speed = sample if speed is None else (
                speed * (1 - QUEUE_SPEED_WEIGHT) + sample * QUEUE_SPEED_WEIGHT)
            report.add("sampled")
    await pool.execute(queries["set_queue_stats"], head["head_seq"], head["sampled_at"], speed)


@_timed("purge_job_events")
async def purge_job_events(report: TaskReport, pool: Pool, retention_s: int,
                           batch_size: int) -> None:
    """Delete live events older than ``GENQ_EVENTS_RETENTION_S`` (a stream resumes from the
    ones kept), oldest first, in batches."""
    while True:
        status = await pool.execute(queries["purge_job_events"], float(retention_s),
                                    batch_size)
        deleted = int(status.split()[-1])
        report.add("deleted", deleted)
        if deleted < batch_size:
            return


@_timed("grant_plan_credits")
async def grant_plan_credits(
    report: TaskReport, pool: Pool, settings: Settings, now: datetime | None = None
) -> None:
    """Grant each user on a granting plan their credits for the current period (a UTC day or
    month), once: the ledger's idempotency key ``plan:<plan>:<period start>`` makes a second
    grant, by this run or any other scheduler's, a replay. ``now``: the instant whose period is
    granted (when None, the clock moved by ``GENQ_PLAN_CLOCK_OFFSET_S``)."""
    if now is None:
        now = datetime.now(UTC) + timedelta(seconds=settings.plan_clock_offset_s)
    run = await plans.grant_plan_credits(pool, now=now, batch_size=settings.cleanup_batch_size)
    report.add("granted", run.granted)
    report.add("credits", run.credits)
    if run.over_limit:
        report.add("over_balance_limit", run.over_limit)


@_timed("requeue_lost_jobs")
async def requeue_lost_jobs(
    report: TaskReport, pool: Pool, redis: ArqRedis, settings: Settings
) -> None:
    """Re-enqueue ``queued`` jobs Redis no longer holds (flushed, or the enqueue failed), or
    that a dead worker holds.

    A worker claims a job (``queued -> running``) the moment arq hands it over, so a job still
    ``queued`` a lease after it was enqueued, with an arq in-progress key, was picked up by a
    worker that died before its claim committed: it is forced back on the queue, or it would
    wait out arq's job timeout (minutes). A job waiting less than that is left to the worker
    that may be claiming it right now (at worst a second delivery, which finds the job claimed
    and does nothing).
    """
    cutoff = await pool.fetchval(queries["requeue_cutoff"], float(settings.requeue_after_s))
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                queries["lost_queued_jobs"], cutoff, settings.cleanup_batch_size,
                not plans.dispatch_on(settings),
            )
            if not rows:
                return
            ids = [r["id"] for r in rows]
            try:
                for row in rows:
                    force = row["waited_s"] >= settings.lease_s
                    report.add("requeued" if await requeue_generation(
                        redis, settings.queue_name, row["id"], force=force) else "still_in_redis")
            except RedisError as exc:
                report.add("redis_errors")
                log.warning("requeue_redis_error", error=str(exc))
                return
            await conn.execute(queries["mark_enqueued"], ids)
        if len(rows) < settings.cleanup_batch_size:
            return


async def _fail_and_refund(report: TaskReport, conn: Connection, job_id: uuid.UUID, code: str,
                           message: str) -> bool:
    reservation_id = await conn.fetchval(queries["fail_job"], job_id, code, message)
    if reservation_id is None:
        return False
    settlement = await ledger.refund(conn, reservation_id)
    if not settlement.replayed and settlement.refunded:
        report.add(CREDITS_REFUNDED, settlement.refunded)
    return True


@_timed("recover_expired_leases")
async def recover_expired_leases(
    report: TaskReport, pool: Pool, redis: ArqRedis, settings: Settings
) -> None:
    """Take back ``running`` jobs whose worker died: retry if attempts remain, else fail+refund."""
    while True:
        to_enqueue: list[uuid.UUID] = []
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(queries["lock_expired_leases"], settings.cleanup_batch_size)
            if not rows:
                return
            for row in rows:
                if row["attempt"] < row["max_attempts"]:
                    await conn.execute(queries["requeue_job"], row["id"])
                    to_enqueue.append(row["id"])
                    report.add("retried")
                elif await _fail_and_refund(
                    report, conn, row["id"], "worker_lost",
                    f"the worker stopped responding {row['attempt']} times; credits refunded",
                ):
                    report.add("failed_refunded")
        for job_id in to_enqueue:
            try:
                await requeue_generation(redis, settings.queue_name, job_id, force=True)
            except RedisError as exc:
                # The job is queued in Postgres; requeue_lost_jobs will enqueue it later.
                report.add("redis_errors")
                log.warning("lease_requeue_redis_error", job_id=str(job_id), error=str(exc))
        if len(rows) < settings.cleanup_batch_size:
            return


@_timed("settle_stale_reservations")
async def settle_stale_reservations(report: TaskReport, pool: Pool, batch_size: int) -> None:
    """Refund reservations past their deadline, failing their job if it is not terminal.

    Locks the job before the reservation, the same order the worker and the API use.
    """
    rows = await pool.fetch(queries["stale_reservations"], batch_size)
    for row in rows:
        async with pool.acquire() as conn, conn.transaction():
            if row["job_id"] is not None:
                job = await conn.fetchrow(queries["lock_job"], row["job_id"])
                if job is not None and job["status"] in ACTIVE_STATUSES:
                    await conn.execute(
                        queries["fail_job"], row["job_id"], "reservation_expired",
                        "the job did not finish before its credit hold expired; "
                        "credits refunded",
                    )
                    report.add("jobs_failed")
            settlement = await ledger.refund(conn, row["id"])
            report.add("already_settled" if settlement.replayed else "refunded")
            if not settlement.replayed and settlement.refunded:
                report.add(CREDITS_REFUNDED, settlement.refunded)


@_timed("retire_old_jobs")
async def retire_old_jobs(report: TaskReport, pool: Pool, settings: Settings) -> None:
    """Archive (or delete) terminal jobs older than the retention period that have no assets."""
    query = (
        queries["archive_old_jobs"]
        if settings.job_retention_action == "archive"
        else queries["delete_old_jobs"]
    )
    while True:
        status = await pool.execute(
            query, float(settings.job_retention_s), settings.cleanup_batch_size
        )
        n = int(status.split()[-1])
        report.add("archived" if settings.job_retention_action == "archive" else "deleted", n)
        if n < settings.cleanup_batch_size:
            return
