"""The Redis transport: how a job id becomes an arq job. Postgres stays the source of truth."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import NoScriptError

# The arq function every generation job runs as; the worker registers it under this name.
GENERATION_FUNCTION = "run_generation"

# arq's ``enqueue_job`` in one round trip instead of WATCH / EXISTS / MULTI / PSETEX / ZADD /
# EXEC. A script runs atomically, so it needs no WATCH: nothing can enqueue the same id between
# the check and the writes. KEYS: job key, result key, queue. ARGV: expiry (ms), the serialized
# job, job id, score (ms). Returns 1 if enqueued, 0 if arq already holds the job or its result.
ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
    return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_LUA.encode(), usedforsecurity=False).hexdigest()


def redis_settings(redis_url: str) -> RedisSettings:
    """arq connection settings from a ``redis://`` URL."""
    return RedisSettings.from_dsn(redis_url)


async def create_arq_pool(redis_url: str) -> ArqRedis:
    """An arq Redis pool (also a plain async Redis client)."""
    return await create_pool(redis_settings(redis_url))


def _enqueue_args(redis: ArqRedis, queue_name: str, job_id: uuid.UUID) -> list[Any]:
    """KEYS and ARGV of :data:`ENQUEUE_LUA` for one job, due now."""
    arq_id = str(job_id)
    enqueue_time_ms = timestamp_ms()
    # As enqueue_job without _defer_*, _expires or _job_try: score = enqueue time, expiry =
    # arq's expires_extra_ms, and the record arq's own serialize_job makes.
    job = serialize_job(GENERATION_FUNCTION, (arq_id,), {}, None, enqueue_time_ms,
                        serializer=redis.job_serializer)
    # redis-py types script arguments as str (it sends the pickled job's bytes unchanged);
    # hence Any.
    return [job_key_prefix + arq_id, result_key_prefix + arq_id, queue_name,
            redis.expires_extra_ms, job, arq_id, enqueue_time_ms]


async def enqueue_generations(
    redis: ArqRedis, queue_name: str, job_ids: Sequence[uuid.UUID]
) -> list[bool]:
    """Put jobs on the queue with ``_job_id`` = job id, exactly as arq's ``enqueue_job``
    would (same record, serializer, expiry and score, due now), all in one round trip.

    One flag per job: False when arq already holds a job (or a kept result) under that id,
    which makes enqueueing the same job twice harmless.
    """
    calls = [_enqueue_args(redis, queue_name, job_id) for job_id in job_ids]

    async def run() -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(ENQUEUE_SHA, 3, *args)
        return await pipe.execute(raise_on_error=False)

    results = await run()
    if any(isinstance(r, NoScriptError) for r in results):
        # First use on this server (or after SCRIPT FLUSH / a restart): load it once. Jobs
        # that did run are not enqueued twice: the script refuses an id arq already holds.
        await redis.script_load(ENQUEUE_LUA)
        results = await run()
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [bool(r) for r in results]


async def enqueue_generation(redis: ArqRedis, queue_name: str, job_id: uuid.UUID) -> bool:
    """:func:`enqueue_generations` for one job."""
    return (await enqueue_generations(redis, queue_name, [job_id]))[0]
