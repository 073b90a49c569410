"""Backing services going away: Redis after the commit (the job is still accepted), Postgres
(503, then recovery), and unexpected failures (500 in the JSON shape)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from shared.db import Pool
from shared.settings import Settings
from tests.integration.api_support import (  # noqa: F401
    ADMIN,
    Api,
    api_fixture,
    proxy_to,
    running_app,
)

JOB = {"model": "local/sketch", "prompt": "a harbour", "num_outputs": 2}


async def test_redis_down_after_commit_still_accepts_the_job(
    settings: Settings, pool: Pool, redis_client: aioredis.Redis
) -> None:
    assert settings.redis_url is not None
    async with proxy_to(settings.redis_url) as proxy:
        via_proxy = settings.model_copy(update={"redis_url": proxy.url_for(settings.redis_url)})
        async with running_app(via_proxy) as (app, client):
            api = Api(app, client, via_proxy, pool)
            user = await api.user(credits=10)
            await proxy.cut()

            headers = {**user.headers, "Idempotency-Key": "while-redis-is-down"}
            r = await client.post("/v1/jobs", json=JOB, headers=headers)
            assert r.status_code == 202, r.text
            job = r.json()
            assert (job["status"], job["enqueued_at"]) == ("queued", None)
            row = await pool.fetchrow(
                "SELECT status, enqueued_at, reservation_id FROM generation_jobs WHERE id = $1",
                uuid.UUID(job["id"]),
            )
            assert row is not None
            assert (row["status"], row["enqueued_at"]) == ("queued", None)
            assert row["reservation_id"] is not None
            assert await api.balance(user) == (8, 2)
            assert await redis_client.exists(f"arq:job:{job['id']}") == 0

            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"] == {"postgres": "ok", "redis": "unavailable"}

            # Redis is back: a retry of the same request replays the job and enqueues it.
            await proxy.start()
            again = await client.post("/v1/jobs", json=JOB, headers=headers)
            assert again.status_code == 202
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["id"] == job["id"]
            assert again.json()["enqueued_at"] is not None
            assert await redis_client.exists(f"arq:job:{job['id']}") == 1
            assert await redis_client.zscore(settings.queue_name, job["id"]) is not None
            assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 1
            assert (await client.get("/readyz")).status_code == 200


async def test_postgres_down_is_503_then_recovers(settings: Settings, pool: Pool) -> None:
    assert settings.database_url is not None
    async with proxy_to(settings.database_url) as proxy:
        via_proxy = settings.model_copy(
            update={"database_url": proxy.url_for(settings.database_url)}
        )
        async with running_app(via_proxy) as (app, client):
            api = Api(app, client, via_proxy, pool)
            known = await api.user(credits=10)
            await api.balance(known)  # its key is now cached in the app
            stranger = await api.user(credits=10)  # its key is not
            await proxy.cut()

            for user in (known, stranger):
                for method, path, body in (
                    ("POST", "/v1/jobs", JOB),
                    ("GET", "/v1/credits", None),
                    ("GET", "/v1/jobs", None),
                ):
                    r = await client.request(method, path, json=body, headers=user.headers)
                    assert r.status_code == 503, (method, path, r.text)
                    assert r.json()["error"]["code"] == "service_unavailable"
                    assert "x-request-id" in r.headers
            r = await client.post("/v1/admin/users", json={"email": "x@example.com"},
                                  headers=ADMIN)
            assert r.status_code == 503
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"] == {"postgres": "unavailable", "redis": "ok"}
            assert (await client.get("/healthz")).status_code == 200

            await proxy.start()
            r = await client.post("/v1/jobs", json=JOB, headers=known.headers)
            assert r.status_code == 202, r.text
            assert await api.balance(known) == (8, 2)
            assert await api.balance(stranger) == (10, 0)
            assert await pool.fetchval("SELECT count(*) FROM generation_jobs") == 1


async def test_unexpected_errors_are_500_in_the_json_shape(settings: Settings,
                                                           pool: Pool) -> None:
    async with running_app(settings) as (app, client):
        api = Api(app, client, settings, pool)
        user = await api.user(credits=10)
        # Break the schema under the running app: a bug-shaped failure, not an outage.
        await pool.execute("ALTER VIEW job_responses RENAME TO job_responses_moved")
        r = await client.get("/v1/jobs", headers={**user.headers, "X-Request-ID": "req-500"})
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal_error",
                                      "message": "an unexpected error occurred",
                                      "details": None}}
        assert r.headers["x-request-id"] == "req-500"
        assert "job_responses" not in r.text  # no internals leak


async def test_readiness_and_liveness(api: Api) -> None:
    r = await api.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
