"""Idempotency-Key on POST /v1/jobs and on admin grants, including under concurrency."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401

JOB = {"model": "local/sketch", "prompt": "a red fox", "num_outputs": 2, "params": {"width": 300}}


async def test_same_key_same_body_replays_the_original(api: Api) -> None:
    user = await api.user(credits=10)
    headers = {**user.headers, "Idempotency-Key": "order-1"}
    first = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.status_code == 202
    # Same body, different key order and whitespace: still the same request.
    second = await api.client.post(
        "/v1/jobs",
        content=b'{ "params": {"width": 300}, "num_outputs": 2, "prompt": "a red fox",'
                b' "model": "local/sketch" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert second.status_code == 202
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.json() == first.json()
    assert await api.balance(user) == (8, 2)
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 1


async def test_same_key_other_body_is_409(api: Api) -> None:
    user = await api.user(credits=10)
    headers = {**user.headers, "Idempotency-Key": "order-2"}
    assert (await api.client.post("/v1/jobs", json=JOB, headers=headers)).status_code == 202
    r = await api.client.post("/v1/jobs", json={**JOB, "num_outputs": 1}, headers=headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    assert await api.balance(user) == (8, 2)
    # Keys belong to one user: another user may use the same key freely.
    other = await api.user(credits=10)
    r = await api.client.post("/v1/jobs", json={**JOB, "num_outputs": 1},
                              headers={**other.headers, "Idempotency-Key": "order-2"})
    assert r.status_code == 202 and "idempotent-replayed" not in r.headers


async def test_fifty_concurrent_posts_with_one_key_make_one_job(
    api: Api, redis_client: aioredis.Redis
) -> None:
    user = await api.user(credits=100)
    headers = {**user.headers, "Idempotency-Key": "burst"}
    responses = await asyncio.gather(*(
        api.client.post("/v1/jobs", json=JOB, headers=headers) for _ in range(50)
    ))
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count(None) == 1 and replayed.count("true") == 49

    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 1
    assert await api.pool.fetchval("SELECT count(*) FROM credit_reservations") == 1
    assert await api.pool.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE kind = 'reserve'"
    ) == 1
    assert await api.balance(user) == (98, 2)
    assert await redis_client.zcard(api.settings.queue_name) == 1


async def test_invalid_idempotency_key_is_422(api: Api) -> None:
    user = await api.user(credits=10)
    for key in (b"x" * 256, b"tab\tkey", "é".encode()):
        headers = {k.encode(): v.encode() for k, v in user.headers.items()}
        r = await api.client.post(
            "/v1/jobs", json=JOB, headers={**headers, b"Idempotency-Key": key}
        )
        assert r.status_code == 422, key
        assert r.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


async def test_admin_grant_is_idempotent(api: Api) -> None:
    user = await api.user()
    path = f"/v1/admin/users/{user.id}/credits"
    headers = {**ADMIN, "Idempotency-Key": "grant-1"}
    first = await api.client.post(path, json={"amount": 25, "reason": "welcome"}, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["balance"] == 25
    assert first.json()["entry"]["kind"] == "grant"
    assert first.json()["entry"]["reason"] == "welcome"
    again = await api.client.post(path, json={"amount": 25, "reason": "welcome"}, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["entry"] == first.json()["entry"]
    other = await api.client.post(path, json={"amount": 26}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert await api.balance(user) == (25, 0)


async def test_a_key_past_its_ttl_can_be_used_again(api: Api) -> None:
    user = await api.user(credits=10)
    headers = {**user.headers, "Idempotency-Key": "old-key"}
    first = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.status_code == 202
    await api.pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $1)",
        float(api.settings.idempotency_ttl_s + 60),
    )
    other = await api.client.post("/v1/jobs", json={**JOB, "num_outputs": 1}, headers=headers)
    assert other.status_code == 202, other.text
    assert "idempotent-replayed" not in other.headers
    assert other.json()["id"] != first.json()["id"]
    assert await api.balance(user) == (7, 3)


async def test_a_key_whose_job_is_gone_is_409_and_writes_nothing(api: Api) -> None:
    # A live key record that no longer points at a job (its holder's job was removed).
    user = await api.user(credits=10)
    await api.pool.execute(
        "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, 'orphan', 'x')",
        user.id,
    )
    r = await api.client.post("/v1/jobs", json=JOB,
                              headers={**user.headers, "Idempotency-Key": "orphan"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert await api.balance(user) == (10, 0)
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


async def test_refused_submit_does_not_use_up_the_key(api: Api) -> None:
    user = await api.user(credits=10)
    headers = {**user.headers, "Idempotency-Key": "retry-me"}
    r = await api.client.post("/v1/jobs", json={**JOB, "num_outputs": 99}, headers=headers)
    assert r.status_code == 422
    assert r.json()["error"]["details"] == [
        {"field": "num_outputs", "message": "local/sketch makes at most 8 outputs per job"}
    ]
    assert await api.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    ok = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert ok.status_code == 202 and "idempotent-replayed" not in ok.headers
