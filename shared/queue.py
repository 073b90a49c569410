"""The Redis transport: how a job id becomes an arq job. Postgres stays the source of truth.

This is the one module that knows arq's private Redis layout (arq 0.28): the key names below,
the job record arq's ``serialize_job`` makes and the enqueue that writes it
(:func:`enqueue_generations`, arq's ``enqueue_job`` in one round trip), and the requeue of a job
arq lost or a dead worker holds (:func:`requeue_generation`). Everything else talks to arq
through its public API (``Worker``, ``ArqRedis``, ``Job``).

tests/integration/test_arq_layout.py pins this layout against the installed arq: the key names
must equal ``arq.constants``, and what :func:`enqueue_generations` writes must be what arq's own
``enqueue_job`` writes (keys, expiry, queue score, the deserialized record). An arq upgrade that
changes any of it fails that test instead of production.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import NoScriptError

# arq's Redis layout (arq.constants): a job's record, its result, the mark of a worker running
# it, its try counter, and the sorted set of jobs asked to abort.
JOB_KEY_PREFIX = "arq:job:"
RESULT_KEY_PREFIX = "arq:result:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
RETRY_KEY_PREFIX = "arq:retry:"
ABORT_JOBS_KEY = "arq:abort"

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


def wake_channel(queue_name: str) -> str:
    """The pub/sub channel on which enqueues wake the queue's idle workers
    (:mod:`worker.wake`)."""
    return f"{queue_name}:wake"


async def create_arq_pool(redis_url: str) -> ArqRedis:
    """An arq Redis pool (also a plain async Redis client)."""
    return await create_pool(redis_settings(redis_url))


# Priority tiers: arq takes due jobs lowest score first, and a job's score is its enqueue time,
# so a higher tier's job is scored as if it had been enqueued this much earlier per tier. The
# head start is bounded: a lower tier's job that has waited longer than that goes before a
# higher tier's newer one, so no tier starves.
TIER_HEAD_START_MS = 60_000


def _enqueue_args(redis: ArqRedis, queue_name: str, job_id: uuid.UUID,
                  tier: int = 0) -> list[Any]:
    """KEYS and ARGV of :data:`ENQUEUE_LUA` for one job, due now (and earlier per ``tier``)."""
    arq_id = str(job_id)
    enqueue_time_ms = timestamp_ms()
    # As enqueue_job without _defer_*, _expires or _job_try: score = enqueue time, expiry =
    # arq's expires_extra_ms, and the record arq's own serialize_job makes.
    job = serialize_job(GENERATION_FUNCTION, (arq_id,), {}, None, enqueue_time_ms,
                        serializer=redis.job_serializer)
    # redis-py types script arguments as str (it sends the pickled job's bytes unchanged);
    # hence Any.
    return [JOB_KEY_PREFIX + arq_id, RESULT_KEY_PREFIX + arq_id, queue_name,
            redis.expires_extra_ms, job, arq_id, enqueue_time_ms - tier * TIER_HEAD_START_MS]


async def enqueue_generations(
    redis: ArqRedis, queue_name: str, job_ids: Sequence[uuid.UUID],
    tiers: Sequence[int] | None = None,
) -> list[bool]:
    """Put jobs on the queue with ``_job_id`` = job id, exactly as arq's ``enqueue_job``
    would (same record, serializer, expiry and score, due now), and wake the queue's idle
    workers (:func:`wake_channel`), all in one round trip.

    One flag per job: False when arq already holds a job (or a kept result) under that id,
    which makes enqueueing the same job twice harmless. ``tiers``: each job's priority tier
    (its plan's), moving it ahead of lower tiers' jobs (:data:`TIER_HEAD_START_MS`).
    """
    calls = [_enqueue_args(redis, queue_name, job_id, tiers[i] if tiers else 0)
             for i, job_id in enumerate(job_ids)]

    async def run() -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(ENQUEUE_SHA, 3, *args)
        pipe.publish(wake_channel(queue_name), b"")
        return (await pipe.execute(raise_on_error=False))[:len(calls)]

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


async def requeue_generation(
    redis: ArqRedis, queue_name: str, job_id: uuid.UUID, *, force: bool = False
) -> bool:
    """Make sure arq will run the job; True if this call put it (back) on the queue.

    A job arq holds (waiting, or running under an in-progress key) is left alone, unless
    ``force``: Postgres says nobody is working on the job (its lease expired, or it has been
    ``queued`` for longer than a worker takes to claim what it picks up), so the in-progress key
    is a dead worker's and would keep every other worker away until arq's own timeout.
    """
    jid = str(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(JOB_KEY_PREFIX + jid)
        pipe.zscore(queue_name, jid)
        pipe.exists(IN_PROGRESS_KEY_PREFIX + jid)
        job_exists, score, in_progress = await pipe.execute()
    if job_exists and score is not None and not (force and in_progress):
        return False
    async with redis.pipeline(transaction=True) as pipe:
        # A kept result, retry counter or stale abort mark would block or spoil the new run.
        pipe.delete(RESULT_KEY_PREFIX + jid, RETRY_KEY_PREFIX + jid, IN_PROGRESS_KEY_PREFIX + jid)
        pipe.zrem(ABORT_JOBS_KEY, jid)
        if job_exists:
            pipe.zadd(queue_name, {jid: int(time.time() * 1000)})
            pipe.publish(wake_channel(queue_name), b"")
        await pipe.execute()
    if job_exists:
        return True
    return await enqueue_generation(redis, queue_name, job_id)
