"""The scheduler: maintenance tasks as arq cron jobs, and the same tasks run once from the CLI;
beside them, the webhook delivery loop (``worker.webhooks``).

Each task runs under a Postgres advisory lock held for the whole run, so however many schedulers
run, a task never runs twice at once and a slow run is never overlapped by the next tick; a
scheduler that finds the lock taken skips that tick. arq's unique cron job ids (every scheduler
computes the same id for a tick) usually keep the duplicates from being enqueued at all, but the
lock is the guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Worker

from shared.db import Pool, close_pool, create_pool
from shared.logging import get_logger
from shared.metrics import Metrics, serve_metrics
from shared.queue import create_arq_pool
from shared.settings import Settings
from shared.storage import open_storage
from worker import maintenance
from worker.maintenance import TaskReport
from worker.webhooks import run_deliveries

log = get_logger(__name__)

TaskFn = Callable[[Pool, ArqRedis, Settings], Awaitable[TaskReport]]


def _expire_assets(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    storage = open_storage(settings)
    return maintenance.expire_assets(pool, storage, settings.cleanup_batch_size)


def _purge_trash(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    storage = open_storage(settings)
    return maintenance.purge_trash(pool, storage, settings.trash_ttl_s,
                                   settings.cleanup_batch_size)


def _sweep_orphans(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    storage = open_storage(settings)
    return maintenance.sweep_orphan_files(pool, storage, settings.cleanup_batch_size)


def _enqueue_new(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.enqueue_new_jobs(pool, redis, settings)


def _requeue_lost(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.requeue_lost_jobs(pool, redis, settings)


def _recover_leases(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.recover_expired_leases(pool, redis, settings)


def _settle_stale(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.settle_stale_reservations(pool, settings.cleanup_batch_size)


def _retire_jobs(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.retire_old_jobs(pool, settings)


def _grant_plans(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.grant_plan_credits(pool, settings)


def _measure_queue(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.measure_queue(pool)


def _purge_events(pool: Pool, redis: ArqRedis, settings: Settings) -> Awaitable[TaskReport]:
    return maintenance.purge_job_events(pool, settings.events_retention_s,
                                        settings.cleanup_batch_size)


# Name -> task, in the order `genq cleanup` runs them.
TASKS: dict[str, TaskFn] = {
    "enqueue-new-jobs": _enqueue_new,
    "expire-assets": _expire_assets,
    "purge-trash": _purge_trash,
    "requeue-lost-jobs": _requeue_lost,
    "recover-expired-leases": _recover_leases,
    "settle-stale-reservations": _settle_stale,
    "retire-old-jobs": _retire_jobs,
    "sweep-orphan-files": _sweep_orphans,
    "grant-plan-credits": _grant_plans,
    "measure-queue": _measure_queue,
    "purge-job-events": _purge_events,
}


# A run holds one connection for its advisory lock and uses one more for its work, and the
# scheduler starts every due task at the same tick: with fewer connections than that, every
# connection can end up holding a lock while waiting for a second one, a deadlock that keeps the
# locks (so every other scheduler skips those tasks) for good.
POOL_MAX_SIZE = 2 * len(TASKS)
# The webhook delivery loop's connections: each claim and each attempt's record is one short
# statement or transaction.
DELIVERY_POOL_SIZE = 4


def _lock_id(name: str) -> int:
    return 0x67656E71_00000000 | zlib.crc32(name.encode())


@contextlib.asynccontextmanager
async def exclusive(pool: Pool, name: str) -> AsyncIterator[bool]:
    """Hold the task's advisory lock for the block; yields False if another run holds it."""
    async with pool.acquire() as conn:
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_id(name))
        try:
            yield bool(got)
        finally:
            if got:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_id(name))


def count_report(metrics: Metrics, report: TaskReport) -> None:
    """Add a task run's report to the scheduler's metrics."""
    metrics.maintenance_runs.labels(report.task).inc()
    for what, n in report.counts.items():
        if what == maintenance.CREDITS_REFUNDED:
            metrics.credits_refunded.inc(n)
        else:
            metrics.maintenance_items.labels(report.task, what).inc(n)


async def run_task(
    name: str, pool: Pool, redis: ArqRedis, settings: Settings, *, quiet: bool = False
) -> TaskReport:
    """Run one task under its lock; a run that finds the lock taken reports ``skipped``.

    ``quiet``: log the summary at debug level when the run found nothing to do (for loops that
    run often).
    """
    async with exclusive(pool, name) as got:
        if not got:
            report = TaskReport(name.replace("-", "_"), {"skipped_locked": 1})
        else:
            report = await TASKS[name](pool, redis, settings)
    # A tick another scheduler is already running is routine; so is an idle run of a loop.
    level = "debug" if not got or (quiet and not report.counts) else "info"
    getattr(log, level)("maintenance_task", task=report.task,
                        duration_s=round(report.duration_s, 4), **report.counts)
    return report


async def run_once(
    settings: Settings, database_url: str, redis_url: str, names: list[str]
) -> list[TaskReport]:
    """Run the named tasks once, in order (the CLI's ``genq cleanup``)."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    redis = await create_arq_pool(redis_url)
    try:
        return [await run_task(name, pool, redis, settings) for name in names]
    finally:
        await redis.aclose()
        await close_pool(pool)


def _every(interval_s: int) -> dict[str, Any]:
    """arq cron fields for "every ``interval_s`` seconds", aligned to the minute or the hour.

    ``interval_s`` divides 60, or is whole minutes dividing 60 (the setting enforces it), so the
    ticks are evenly spaced.
    """
    if interval_s < 60:
        return {"second": set(range(0, 60, interval_s))}
    minutes = interval_s // 60
    return {"minute": set(range(0, 60, minutes)), "second": {0}}


def _cron_for(queue_name: str, name: str, schedule: dict[str, Any]) -> CronJob:
    async def job(ctx: dict[str, Any]) -> dict[str, int]:
        report = await run_task(name, ctx["pool"], ctx["redis"], ctx["settings"])
        count_report(ctx["metrics"], report)
        return report.counts

    job.__qualname__ = f"genq_{name.replace('-', '_')}"
    # The queue name is in the cron job's id so two deployments sharing a Redis database do not
    # swallow each other's ticks.
    return cron(job, name=f"{queue_name}:{name}", unique=True, timeout=3600, **schedule)


# Tasks not on the sweep interval, with their own schedule.
_OWN_SCHEDULE = ("enqueue-new-jobs", "measure-queue", "sweep-orphan-files")


def cron_jobs(settings: Settings) -> list[CronJob]:
    """Every task on its schedule: never-enqueued jobs and the queue's speed every few seconds,
    recovery on the sweep interval, the orphan scan hourly."""
    every = _every(settings.sweep_interval_s)
    q = settings.queue_name
    jobs = [_cron_for(q, name, _every(settings.enqueue_sweep_interval_s))
            for name in ("enqueue-new-jobs", "measure-queue")]
    jobs += [_cron_for(q, name, every) for name in TASKS if name not in _OWN_SCHEDULE]
    jobs.append(_cron_for(q, "sweep-orphan-files", {"minute": {17}, "second": {0}}))
    return jobs


async def run_scheduler(settings: Settings, database_url: str, redis_url: str) -> None:
    """Run the cron worker until cancelled (SIGINT/SIGTERM)."""
    pool = await create_pool(database_url, min_size=1, max_size=POOL_MAX_SIZE)
    # The webhook deliveries have a pool of their own: the tasks' pool is sized for their locks.
    delivery_pool = await create_pool(database_url, min_size=1, max_size=DELIVERY_POOL_SIZE)
    redis = await create_arq_pool(redis_url)
    metrics = Metrics()
    server = serve_metrics(metrics, settings, "scheduler")
    deliveries = asyncio.create_task(run_deliveries(delivery_pool, settings, metrics))

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx.update(pool=pool, settings=settings, metrics=metrics)

    worker = Worker(
        functions=[],
        cron_jobs=cron_jobs(settings),
        redis_pool=redis,
        queue_name=f"{settings.queue_name}:cron",
        on_startup=on_startup,
        handle_signals=False,
        keep_result=0,
        max_jobs=len(TASKS),
        poll_delay=0.5,
    )
    log.info("scheduler_started", interval_s=settings.sweep_interval_s, tasks=list(TASKS))
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        try:
            with warnings.catch_warnings():
                # arq 0.28 closes its Redis pool with redis-py 5's deprecated close().
                warnings.filterwarnings(
                    "ignore", message="Call to deprecated close", category=DeprecationWarning
                )
                await worker.close()
        finally:
            deliveries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliveries
            await close_pool(delivery_pool)
            await close_pool(pool)
            if server is not None:
                server.close()
        log.info("scheduler_stopped")
