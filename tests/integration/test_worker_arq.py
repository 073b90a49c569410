"""The arq wiring: a real arq Worker (in-process, burst mode) with genq's WorkerSettings."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.worker import Worker

from shared.db import Pool
from shared.queue import enqueue_generation
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


def test_job_timeout_covers_the_slowest_model_and_the_lease(settings: Settings) -> None:
    timeout = job_timeout_s(settings)
    assert timeout >= 60 + settings.download_timeout_s
    long_lease = settings.model_copy(update={"lease_s": 10_000.0})
    assert job_timeout_s(long_lease) == 10_000.0
