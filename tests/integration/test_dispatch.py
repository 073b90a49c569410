"""The per-user running cap at the intake: jobs past the cap wait in PostgreSQL, not on the
Redis queue; a place freed (a queued job canceled) lets the next one go; the enqueue sweep
dispatches no more than the cap."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.db import Pool
from shared.queue import JOB_KEY_PREFIX
from shared.settings import Settings
from tests.integration.api_support import Api, User, running_app
from worker import maintenance

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 1}
CAP = 2


@pytest.fixture(name="capped")
async def capped_api(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    configured = settings.model_copy(update={"user_max_running": CAP})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


async def _submit(api: Api, user: User) -> dict[str, object]:
    r = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
    assert r.status_code == 202, r.text
    job: dict[str, object] = r.json()
    return job


async def _on_queue(redis: aioredis.Redis, queue: str, job_id: object) -> bool:
    return await redis.zscore(queue, str(job_id)) is not None


async def test_jobs_past_the_cap_wait_and_a_cancel_lets_the_next_go(
    capped: Api, redis_client: aioredis.Redis
) -> None:
    api, queue = capped, capped.settings.queue_name
    user, other = await api.user(credits=10), await api.user(credits=10)
    jobs = [await _submit(api, user) for _ in range(4)]
    assert [j["enqueued_at"] is not None for j in jobs] == [True, True, False, False]
    assert [await _on_queue(redis_client, queue, j["id"]) for j in jobs] == [
        True, True, False, False]
    # Another user has places of their own.
    theirs = await _submit(api, other)
    assert theirs["enqueued_at"] is not None

    r = await api.client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user.headers)
    assert r.status_code == 200, r.text
    assert await _on_queue(redis_client, queue, jobs[2]["id"])
    assert not await _on_queue(redis_client, queue, jobs[3]["id"])
    r = await api.client.get(f"/v1/jobs/{jobs[2]['id']}", headers=user.headers)
    assert r.json()["enqueued_at"] is not None
    assert await api.balance(user) == (7, 3)


async def test_the_sweep_dispatches_up_to_the_cap(
    capped: Api, pool: Pool, redis_client: aioredis.Redis
) -> None:
    api, settings = capped, capped.settings
    user = await api.user(credits=10)
    jobs = [await _submit(api, user) for _ in range(5)]
    # As after a Redis outage: nothing on the queue, nothing marked dispatched.
    ids = [uuid.UUID(str(j["id"])) for j in jobs]
    await redis_client.delete(settings.queue_name, *(JOB_KEY_PREFIX + str(i) for i in ids))
    await pool.execute("UPDATE generation_jobs SET enqueued_at = NULL, "
                       "created_at = created_at - interval '5 seconds' WHERE id = ANY($1)", ids)
    report = await maintenance.enqueue_new_jobs(pool, api.app.state.genq.redis, settings)
    assert report.counts["dispatched"] == CAP
    on_queue = [await _on_queue(redis_client, settings.queue_name, j) for j in ids]
    assert on_queue == [True, True, False, False, False]
    again = await maintenance.enqueue_new_jobs(pool, api.app.state.genq.redis, settings)
    assert again.counts.get("dispatched", 0) == 0
