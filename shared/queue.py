"""The Redis transport: how a job id becomes an arq job. Postgres stays the source of truth."""

from __future__ import annotations

import uuid

from arq.connections import ArqRedis, RedisSettings, create_pool

# The arq function every generation job runs as; the worker registers it under this name.
GENERATION_FUNCTION = "run_generation"


def redis_settings(redis_url: str) -> RedisSettings:
    """arq connection settings from a ``redis://`` URL."""
    return RedisSettings.from_dsn(redis_url)


async def create_arq_pool(redis_url: str) -> ArqRedis:
    """An arq Redis pool (also a plain async Redis client)."""
    return await create_pool(redis_settings(redis_url))


async def enqueue_generation(redis: ArqRedis, queue_name: str, job_id: uuid.UUID) -> bool:
    """Put the job on the queue with ``_job_id`` = job id.

    Returns False when arq already holds a job (or a kept result) under that id, which makes
    enqueueing the same job twice harmless.
    """
    job = await redis.enqueue_job(
        GENERATION_FUNCTION, str(job_id), _job_id=str(job_id), _queue_name=queue_name
    )
    return job is not None
