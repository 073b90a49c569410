"""Lease recovery inside every worker, so a job whose worker died is taken back even where no
scheduler runs.

A live worker renews its lease every few seconds, so an expired lease means nobody is working on
the job. arq alone would redeliver it only when its in-progress key expires (the largest job
timeout + 10 s after the job STARTED), and never if Redis lost the job. This loop runs the
scheduler's ``recover-expired-leases`` task (one run at a time across all processes, by advisory
lock): the job goes back to ``queued``, arq's stale keys are dropped and it is enqueued again;
the next delivery claims it and resumes its prediction.
"""

from __future__ import annotations

import asyncio

import asyncpg
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from shared.db import Pool
from shared.logging import get_logger
from shared.settings import Settings
from worker.scheduler import run_task

log = get_logger(__name__)


async def recovery_loop(pool: Pool, redis: ArqRedis, settings: Settings) -> None:
    """Run lease recovery now and then every ``lease_recovery_interval_s``, until cancelled."""
    while True:
        try:
            await run_task("recover-expired-leases", pool, redis, settings, quiet=True)
        except (OSError, RedisError, asyncpg.PostgresError) as exc:
            log.warning("lease_recovery_failed", error=str(exc))
        await asyncio.sleep(settings.lease_recovery_interval_s)
