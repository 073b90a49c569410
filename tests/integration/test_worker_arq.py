"""The arq wiring: a real arq Worker (in-process, burst mode) with genq's WorkerSettings."""

from __future__ import annotations

import uuid

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job
from arq.worker import Worker

from shared.db import Pool
from shared.queue import GENERATION_FUNCTION, enqueue_generation
from shared.settings import Settings
from tests.factories import assert_invariants, create_job, job_row
from worker.main import close_worker, job_timeout_s, worker_options


async def _burst(settings: Settings) -> Worker:
    options = worker_options(settings)
    options.update(burst=True, handle_signals=False)
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    return worker


async def test_worker_runs_queued_jobs_and_the_id_can_be_enqueued_again(
    pool: Pool, arq_redis: ArqRedis, settings: Settings
) -> None:
    jobs = [await create_job(pool, num_outputs=2, credits=2) for _ in range(5)]
    for job in jobs:
        assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    # While arq holds the job, enqueueing the same id is a no-op.
    assert not await enqueue_generation(arq_redis, settings.queue_name, jobs[0].id)
    worker = await _burst(settings)
    assert worker.jobs_complete == 5 and worker.jobs_failed == 0
    for job in jobs:
        assert (await job_row(pool, job.id))["status"] == "succeeded"
        assert (await assert_invariants(pool, job.user_id)).balance == 0
    # keep_result=0: nothing is kept, so a later delivery of the same id (lost-job requeue,
    # lease recovery) is accepted by arq, and the job itself turns it into a no-op.
    assert await arq_redis.keys("arq:result:*") == []
    assert await enqueue_generation(arq_redis, settings.queue_name, jobs[0].id)
    worker = await _burst(settings)
    assert worker.jobs_complete == 1
    assert (await job_row(pool, jobs[0].id))["attempt"] == 1


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
    mine = await Job(str(ours), arq_redis, _queue_name=settings.queue_name).info()
    arqs = await arq_job.info()
    assert mine is not None and arqs is not None
    assert (mine.function, mine.args, mine.kwargs, mine.job_try) == (
        arqs.function, (str(ours),), arqs.kwargs, arqs.job_try
    )
    # Due at its enqueue time, kept as long as arq keeps a job that is due now.
    assert mine.score == int(mine.enqueue_time.timestamp() * 1000)
    assert abs(mine.enqueue_time.timestamp() - arqs.enqueue_time.timestamp()) < 5
    for job_id in (ours, theirs):
        ttl_ms = await arq_redis.pttl(f"{job_key_prefix}{job_id}")
        assert arq_redis.expires_extra_ms - 5000 < ttl_ms <= arq_redis.expires_extra_ms
    # Held (queued) or finished with a kept result: a second enqueue changes nothing.
    assert not await enqueue_generation(arq_redis, settings.queue_name, ours)
    done = uuid.uuid4()
    await arq_redis.set(f"{result_key_prefix}{done}", b"kept")
    assert not await enqueue_generation(arq_redis, settings.queue_name, done)
    assert await arq_redis.zscore(settings.queue_name, str(done)) is None
    assert await arq_redis.zcard(settings.queue_name) == 2


def test_job_timeout_covers_the_slowest_model_and_the_lease(settings: Settings) -> None:
    timeout = job_timeout_s(settings)
    assert timeout >= 60 + settings.download_timeout_s
    long_lease = settings.model_copy(update={"lease_s": 10_000.0})
    assert job_timeout_s(long_lease) == 10_000.0
