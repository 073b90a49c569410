"""A job the intake accepted while Redis was unreachable starts within seconds of Redis being
back: the scheduler's frequent sweep of never-enqueued jobs, not the requeue of jobs Redis lost
(which waits ``requeue_after_s``, a minute by default)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from arq.connections import ArqRedis
from arq.worker import Worker

from shared.db import Pool
from shared.settings import Settings
from tests.factories import assert_invariants, create_job, job_row, ledger_kinds
from tests.integration.api_support import Api, proxy_to, running_app
from worker.main import close_worker, worker_options
from worker.scheduler import run_scheduler, run_task

JOB = {"model": "local/sketch", "prompt": "a harbour at night", "num_outputs": 2}


@contextlib.asynccontextmanager
async def scheduler_and_worker(settings: Settings) -> AsyncIterator[None]:
    """genq's scheduler and an arq worker with genq's settings, running until the block ends."""
    assert settings.database_url is not None and settings.redis_url is not None
    options = worker_options(settings)
    options.update(handle_signals=False)
    worker = Worker(**options)
    tasks = [asyncio.create_task(worker.main()),
             asyncio.create_task(run_scheduler(settings, settings.database_url,
                                               settings.redis_url))]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_worker(worker)


async def test_a_job_accepted_while_redis_was_down_runs_within_seconds(
    settings: Settings, pool: Pool
) -> None:
    assert settings.redis_url is not None
    # Default sweep and requeue intervals: a minute each.
    assert (settings.sweep_interval_s, settings.requeue_after_s) == (60, 60.0)
    async with proxy_to(settings.redis_url) as proxy, scheduler_and_worker(settings):
        via_proxy = settings.model_copy(update={"redis_url": proxy.url_for(settings.redis_url)})
        async with running_app(via_proxy) as (app, client):
            api = Api(app, client, via_proxy, pool)
            user = await api.user(credits=10)
            await proxy.cut()
            r = await client.post("/v1/jobs", json=JOB, headers=user.headers)
            assert r.status_code == 202, r.text
            assert (r.json()["status"], r.json()["enqueued_at"]) == ("queued", None)
            job_id = uuid.UUID(r.json()["id"])
            await proxy.start()
            back = time.monotonic()

            status = "queued"
            for _ in range(300):  # up to about 30 s; the old sweep needed 60 to 120
                status = (await job_row(pool, job_id))["status"]
                if status == "succeeded":
                    break
                await asyncio.sleep(0.1)
            waited = time.monotonic() - back
            assert status == "succeeded"
            print(f"enqueue sweep: succeeded {waited:.2f} s after Redis was back")
            r = await client.get(f"/v1/jobs/{job_id}", headers=user.headers)
            assert r.json()["status"] == "succeeded" and r.json()["enqueued_at"] is not None
            assert len(r.json()["outputs"]) == 2
            assert await api.balance(user) == (8, 0)
    assert [k for k, *_ in await ledger_kinds(pool, user.id)] == ["grant", "reserve", "capture"]
    await assert_invariants(pool, user.id)


async def test_the_sweep_takes_only_never_enqueued_jobs_and_marks_them(
    settings: Settings, pool: Pool, arq_redis: ArqRedis
) -> None:
    # Dated a minute ahead, so that it is still "just accepted" when the run starts however
    # slowly this machine runs the test.
    fresh = await create_job(pool, num_outputs=1, created_ago_s=-60)
    enqueued = await create_job(pool, num_outputs=1, created_ago_s=30)
    lost = [await create_job(pool, num_outputs=1, created_ago_s=5) for _ in range(3)]
    await pool.execute(
        "UPDATE generation_jobs SET enqueued_at = NULL WHERE id = ANY($1::uuid[])",
        [fresh.id, *(j.id for j in lost)],
    )
    report = await run_task("enqueue-new-jobs", pool, arq_redis, settings)
    assert report.counts == {"enqueued": 3}
    for job in lost:
        assert await arq_redis.zscore(settings.queue_name, str(job.id)) is not None
        assert (await job_row(pool, job.id))["enqueued_at"] is not None
    # Just accepted (the intake may be enqueueing it right now), or enqueued already: left alone.
    for job in (fresh, enqueued):
        assert await arq_redis.zscore(settings.queue_name, str(job.id)) is None
    assert (await job_row(pool, fresh.id))["enqueued_at"] is None
    # Nothing left for the next run.
    assert (await run_task("enqueue-new-jobs", pool, arq_redis, settings)).counts == {}
