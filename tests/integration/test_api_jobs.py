"""Submitting, reading and canceling jobs through the real app, Postgres and Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis

from sql import queries
from tests.integration.api_support import Api, User, api_fixture  # noqa: F401

JOB = {"model": "local/poster", "prompt": "a lighthouse at dusk", "num_outputs": 2}  # 3 each


async def _submit(api: Api, user: User, body: dict[str, Any] | None = None,
                  **headers: str) -> dict[str, Any]:
    r = await api.client.post("/v1/jobs", json=body or JOB, headers={**user.headers, **headers})
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    return job


async def test_submit_reserves_the_price_and_enqueues(
    api: Api, redis_client: aioredis.Redis
) -> None:
    user = await api.user(credits=10)
    r = await api.client.post(
        "/v1/jobs",
        json={**JOB, "params": {"width": 640, "format": "png"}, "seed": 42},
        headers=user.headers,
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert "idempotent-replayed" not in r.headers
    assert job["status"] == "queued"
    assert job["cost"] == {"price_per_output": 3, "reserved": 6, "captured": 0, "refunded": 0}
    # The model's defaults sit under the client's params.
    assert job["params"] == {"width": 640, "height": 768, "format": "png"}
    assert (job["seed"], job["outputs"], job["error"]) == (42, [], None)
    assert job["enqueued_at"] is not None

    assert await api.balance(user) == (4, 6)
    got = await api.client.get(f"/v1/jobs/{job['id']}", headers=user.headers)
    assert got.status_code == 200
    assert got.json() == job

    # Ledger: the grant, then the reservation for this job.
    ledger = (await api.client.get("/v1/credits/ledger", headers=user.headers)).json()["data"]
    assert [(e["kind"], e["amount"], e["job_id"]) for e in ledger] == [
        ("reserve", -6, job["id"]), ("grant", 10, None)
    ]
    row = await api.pool.fetchrow(
        "SELECT provider, max_attempts, reservation_id, enqueued_at FROM generation_jobs "
        "WHERE id = $1", uuid.UUID(job["id"]),
    )
    assert row is not None
    assert (row["provider"], row["max_attempts"]) == ("local", api.settings.max_attempts)
    reservation = await api.pool.fetchrow(queries["get_reservation"], row["reservation_id"])
    assert reservation is not None
    assert (reservation["amount"], reservation["status"]) == (6, "open")
    assert str(reservation["job_id"]) == job["id"]

    # The arq job: its record under arq:job:<id> and the id in the queue's sorted set.
    assert await redis_client.exists(f"arq:job:{job['id']}") == 1
    assert await redis_client.zscore(api.settings.queue_name, job["id"]) is not None


async def test_short_balance_is_402_and_writes_nothing(
    api: Api, redis_client: aioredis.Redis
) -> None:
    user = await api.user(credits=5)
    r = await api.client.post(
        "/v1/jobs", json=JOB, headers={**user.headers, "Idempotency-Key": "short"}
    )
    assert r.status_code == 402
    assert r.json()["error"]["code"] == "insufficient_credits"
    assert r.json()["error"]["details"] == {"price": 6, "balance": 5}
    assert await api.balance(user) == (5, 0)
    for table in ("generation_jobs", "credit_reservations", "idempotency_keys"):
        assert await api.pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await api.pool.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE user_id = $1", user.id
    ) == 1  # the grant only
    assert await redis_client.zcard(api.settings.queue_name) == 0
    # The key was not used up by the failure: after a top-up the same request goes through.
    await api.client.post(f"/v1/admin/users/{user.id}/credits", json={"amount": 1},
                          headers={"Authorization": "Bearer test-admin-token-0123456789abcdef"})
    again = await api.client.post(
        "/v1/jobs", json=JOB, headers={**user.headers, "Idempotency-Key": "short"}
    )
    assert again.status_code == 202
    assert "idempotent-replayed" not in again.headers


async def test_other_users_jobs_are_404(api: Api) -> None:
    alice, bob = await api.user(credits=10), await api.user(credits=10)
    job = await _submit(api, alice)
    for method, path in (("GET", f"/v1/jobs/{job['id']}"),
                         ("POST", f"/v1/jobs/{job['id']}/cancel")):
        r = await api.client.request(method, path, headers=bob.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "job_not_found"
    listing = await api.client.get("/v1/jobs", headers=bob.headers)
    assert listing.json() == {"data": [], "next_cursor": None}
    # Alice's job is untouched by Bob's cancel.
    assert (await api.client.get(f"/v1/jobs/{job['id']}", headers=alice.headers)
            ).json()["status"] == "queued"
    for path in ("/v1/jobs/not-a-uuid", f"/v1/jobs/{uuid.uuid4()}"):
        r = await api.client.get(path, headers=alice.headers)
        assert r.status_code == 404


async def test_list_is_newest_first_with_cursor_and_status_filter(api: Api) -> None:
    user = await api.user(credits=100)
    one = {"model": "local/sketch", "prompt": "p", "num_outputs": 1}
    ids = [(await _submit(api, user, one))["id"] for _ in range(5)]
    cancel = await api.client.post(f"/v1/jobs/{ids[1]}/cancel", headers=user.headers)
    assert cancel.status_code == 200

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/jobs", params=params, headers=user.headers)).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3

    queued = (await api.client.get("/v1/jobs?status=queued", headers=user.headers)).json()
    assert [j["id"] for j in queued["data"]] == [i for i in ids[::-1] if i != ids[1]]
    canceled = (await api.client.get("/v1/jobs?status=canceled", headers=user.headers)).json()
    assert [j["id"] for j in canceled["data"]] == [ids[1]]

    big = await api.client.get("/v1/jobs?limit=1000", headers=user.headers)
    assert big.status_code == 200 and len(big.json()["data"]) == 5
    for bad in ("status=done", "limit=0", "limit=-1", "limit=abc", "cursor=%%%",
                "cursor=bm90LWEtY3Vyc29y"):
        r = await api.client.get(f"/v1/jobs?{bad}", headers=user.headers)
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "validation_error"


async def test_cancel_queued_refunds_then_terminal_is_409(api: Api) -> None:
    user = await api.user(credits=10)
    job = await _submit(api, user)
    r = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "canceled" and body["finished_at"] is not None
    assert body["cost"] == {"price_per_output": 3, "reserved": 6, "captured": 0, "refunded": 6}
    assert await api.balance(user) == (10, 0)

    again = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_cancelable"
    assert again.json()["error"]["details"] == {"status": "canceled"}


async def test_concurrent_cancels_refund_exactly_once(api: Api) -> None:
    user = await api.user(credits=6)
    job = await _submit(api, user)
    assert await api.balance(user) == (0, 6)
    responses = await asyncio.gather(*(
        api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        for _ in range(20)
    ))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 19
    assert await api.balance(user) == (6, 0)
    refunds = await api.pool.fetch(
        "SELECT amount FROM credit_ledger WHERE user_id = $1 AND kind = 'refund'", user.id
    )
    assert [r["amount"] for r in refunds] == [6]
    sums = await api.pool.fetchrow(queries["ledger_sums"], user.id)
    assert sums is not None and (sums["amount"], sums["reserved"]) == (6, 0)


async def test_cancel_running_asks_the_worker(api: Api) -> None:
    user = await api.user(credits=10)
    job = await _submit(api, user)
    # What a worker's claim does to the row.
    await api.pool.execute(
        "UPDATE generation_jobs SET status = 'running', started_at = now(), attempt = 1 "
        "WHERE id = $1", uuid.UUID(job["id"]),
    )
    r = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    # The credits stay held until the worker settles the job.
    assert await api.balance(user) == (4, 6)
    # Asking twice is harmless and still 202.
    r2 = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
    assert r2.status_code == 202


async def test_a_job_without_seed_gets_one_chosen_at_submit(api: Api) -> None:
    user = await api.user(credits=20)
    headers = {**user.headers, "Idempotency-Key": "no-seed"}
    first = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.status_code == 202, first.text
    job = first.json()
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**31
    # Recorded on the job: a read and the row show the same seed.
    got = await api.client.get(f"/v1/jobs/{job['id']}", headers=user.headers)
    assert got.json()["seed"] == job["seed"]
    stored = await api.pool.fetchval(
        "SELECT seed FROM generation_jobs WHERE id = $1", uuid.UUID(job["id"])
    )
    assert stored == job["seed"]
    # A replay of the same seedless body is the original job, with its seed.
    again = await api.client.post("/v1/jobs", json=JOB, headers=headers)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert (again.json()["id"], again.json()["seed"]) == (job["id"], job["seed"])
    # A seed the client chose is kept as sent.
    chosen = await _submit(api, user, {**JOB, "seed": 2**40})
    assert chosen["seed"] == 2**40
