"""Take back running jobs whose worker died.

A live worker renews its lease every few seconds, so an expired lease means nobody is working
on the job. arq alone would redeliver it only when its in-progress key expires (the largest job
timeout + 10 s after the job STARTED), and never if Redis lost the job. Here Postgres decides:
the stale in-progress key is dropped and the job is enqueued again (a no-op if arq still holds
it). The next delivery re-claims it and resumes its prediction.
"""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from shared.db import Pool
from shared.logging import get_logger
from shared.queue import enqueue_generation
from worker import jobs

log = get_logger(__name__)


async def recover_expired_leases(pool: Pool, redis: ArqRedis, queue_name: str) -> int:
    """Re-deliver every running job whose lease expired; returns how many."""
    ids = await jobs.expired_running_jobs(pool)
    for job_id in ids:
        await redis.delete(in_progress_key_prefix + str(job_id))
        enqueued = await enqueue_generation(redis, queue_name, job_id)
        log.info("lease_expired_job_redelivered", job_id=str(job_id), new_arq_job=enqueued)
    return len(ids)


async def recovery_loop(pool: Pool, redis: ArqRedis, queue_name: str, interval_s: float) -> None:
    """Run :func:`recover_expired_leases` now and then every ``interval_s``, until cancelled."""
    while True:
        try:
            await recover_expired_leases(pool, redis, queue_name)
        except (OSError, ConnectionError) as exc:
            log.warning("lease_recovery_failed", error=str(exc))
        await asyncio.sleep(interval_s)
