"""shared/queue.py knows arq's private Redis layout; this pins it against the installed arq, so
an arq upgrade that changes a key name, the job record or what ``enqueue_job`` writes fails here
and not in production."""

from __future__ import annotations

import hashlib
import inspect
import uuid

import arq.constants
from arq.connections import ArqRedis
from arq.jobs import deserialize_job_raw
from arq.worker import Worker

from shared import queue
from shared.db import Pool
from shared.queue import GENERATION_FUNCTION, enqueue_generation, requeue_generation
from shared.settings import Settings
from tests.factories import assert_invariants, create_job, job_row
from worker.main import close_worker, worker_options


def test_key_names_are_the_installed_arqs() -> None:
    genq = {
        "job": queue.JOB_KEY_PREFIX,
        "result": queue.RESULT_KEY_PREFIX,
        "in_progress": queue.IN_PROGRESS_KEY_PREFIX,
        "retry": queue.RETRY_KEY_PREFIX,
        "abort": queue.ABORT_JOBS_KEY,
    }
    installed = {
        "job": arq.constants.job_key_prefix,
        "result": arq.constants.result_key_prefix,
        "in_progress": arq.constants.in_progress_key_prefix,
        "retry": arq.constants.retry_key_prefix,
        "abort": arq.constants.abort_jobs_ss,
    }
    assert genq == installed


async def _written(redis: ArqRedis, queue_name: str, job_id: uuid.UUID) -> dict[str, object]:
    """Everything Redis holds about one job id, with the id itself written as ``ID``."""
    jid = str(job_id)
    keys = sorted([k.decode() async for k in redis.scan_iter(match=f"*{jid}*")])
    raw = await redis.get(arq.constants.job_key_prefix + jid)
    assert raw is not None
    function, args, kwargs, job_try, enqueue_time_ms = deserialize_job_raw(
        raw, deserializer=redis.job_deserializer
    )
    ttl_ms = await redis.pttl(arq.constants.job_key_prefix + jid)
    score = await redis.zscore(queue_name, jid)
    return {
        "keys": [k.replace(jid, "ID") for k in keys],
        "types": [(await redis.type(k)).decode() for k in keys],
        "record": (function, tuple(a.replace(jid, "ID") for a in args), kwargs, job_try),
        # Due at once: the queue score is the enqueue time.
        "score_is_enqueue_time": score == enqueue_time_ms,
        # Kept as long as arq keeps a job that is due now.
        "ttl_class": redis.expires_extra_ms - 60_000 < ttl_ms <= redis.expires_extra_ms,
    }


async def test_enqueue_writes_what_arqs_enqueue_job_writes(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    # SCRIPT FLUSH: the first call finds no script on the server and loads it.
    await arq_redis.script_flush()
    assert await enqueue_generation(arq_redis, settings.queue_name, ours)
    arq_job = await arq_redis.enqueue_job(GENERATION_FUNCTION, str(theirs), _job_id=str(theirs),
                                          _queue_name=settings.queue_name)
    assert arq_job is not None

    mine = await _written(arq_redis, settings.queue_name, ours)
    arqs = await _written(arq_redis, settings.queue_name, theirs)

    assert mine == arqs
    assert mine["keys"] == [arq.constants.job_key_prefix + "ID"]
    assert mine["record"] == (GENERATION_FUNCTION, ("ID",), {}, None)
    assert mine["score_is_enqueue_time"] and mine["ttl_class"]
    # Held (queued) or finished with a kept result: a second enqueue changes nothing, as arq's.
    assert not await enqueue_generation(arq_redis, settings.queue_name, ours)
    assert await arq_redis.enqueue_job(GENERATION_FUNCTION, str(theirs), _job_id=str(theirs),
                                       _queue_name=settings.queue_name) is None
    done = uuid.uuid4()
    await arq_redis.set(arq.constants.result_key_prefix + str(done), b"kept")
    assert not await enqueue_generation(arq_redis, settings.queue_name, done)
    assert await arq_redis.zscore(settings.queue_name, str(done)) is None
    assert await arq_redis.zcard(settings.queue_name) == 2
    # Redis is shared by the whole run: leave no kept result for other tests to find.
    await arq_redis.delete(arq.constants.result_key_prefix + str(done))


async def test_forced_requeue_frees_a_job_a_dead_arq_worker_left_behind(
    pool: Pool, arq_redis: ArqRedis, settings: Settings
) -> None:
    job = await create_job(pool, num_outputs=1, credits=1)
    jid = str(job.id)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    # What a killed arq worker leaves behind, under the installed arq's own names: its mark of
    # running the job, its try counter, and an abort request from before.
    await arq_redis.set(arq.constants.in_progress_key_prefix + jid, b"1", px=600_000)
    await arq_redis.set(arq.constants.retry_key_prefix + jid, b"3")
    await arq_redis.zadd(arq.constants.abort_jobs_ss, {jid: 1})
    assert not await requeue_generation(arq_redis, settings.queue_name, job.id)

    assert await requeue_generation(arq_redis, settings.queue_name, job.id, force=True)

    options = worker_options(settings)
    options.update(burst=True, handle_signals=False)
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert (await job_row(pool, job.id))["status"] == "succeeded"
    assert (await assert_invariants(pool, job.user_id)).balance == 0


# The source of arq's Worker.main that worker/wake.py's WakeableWorker.main follows (arq 0.28).
ARQ_WORKER_MAIN_SHA256 = "45ca1591c9717466eec76e17fa958f84acf6085103d692a84ee25d9904e7f8fc"


def test_the_wakeable_poll_loop_follows_the_installed_arqs() -> None:
    """WakeableWorker.main is arq's own poll loop with the pause made wakeable: an arq that
    changes that loop fails here (bring worker/wake.py in line, then this digest)."""
    source = inspect.getsource(Worker.main)
    assert hashlib.sha256(source.encode()).hexdigest() == ARQ_WORKER_MAIN_SHA256, source
