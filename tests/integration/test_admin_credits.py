"""Admin credit corrections: a negative grant (ledger kind ``adjust``) never takes a balance
below zero, also racing reserves; a finished job's captured credits are refunded once however
many admins ask at once."""

from __future__ import annotations

import asyncio
import uuid

from tests.factories import assert_invariants
from tests.integration.api_support import ADMIN, Api, User, api_fixture  # noqa: F401

JOB = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 2, "params": {}}


async def _ledger(api: Api, user_id: uuid.UUID) -> list[tuple[str, int, str | None]]:
    rows = await api.pool.fetch(
        "SELECT kind, amount, job_id::text FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id)
    return [(r["kind"], r["amount"], r["job_id"]) for r in rows]


async def test_a_negative_grant_takes_credits_back_but_never_below_zero(api: Api) -> None:
    user = await api.user(credits=10)
    path = f"/v1/admin/users/{user.id}/credits"
    taken = await api.client.post(path, json={"amount": -4, "reason": "duplicate grant"},
                                  headers={**ADMIN, "Idempotency-Key": "fix-1"})
    assert taken.status_code == 200, taken.text
    assert taken.json()["balance"] == 6
    assert taken.json()["entry"] | {"id": 0, "created_at": ""} == {
        "id": 0, "kind": "adjust", "amount": -4, "reserved_delta": 0, "balance_after": 6,
        "job_id": None, "reservation_id": None, "reason": "duplicate grant", "created_at": ""}
    replay = await api.client.post(path, json={"amount": -4},
                                   headers={**ADMIN, "Idempotency-Key": "fix-1"})
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (200, "true")
    too_much = await api.client.post(path, json={"amount": -7}, headers=ADMIN)
    assert (too_much.status_code, too_much.json()["error"]["code"]) == (
        402, "insufficient_credits")
    zero = await api.client.post(path, json={"amount": 0}, headers=ADMIN)
    assert (zero.status_code, zero.json()["error"]["code"]) == (422, "validation_error")
    assert await _ledger(api, user.id) == [("grant", 10, None), ("adjust", -4, None)]
    account = await assert_invariants(api.pool, user.id)
    assert (account.balance, account.reserved) == (6, 0)


async def test_negative_grants_racing_reserves_never_go_below_zero(api: Api) -> None:
    for _ in range(3):
        user = await api.user(credits=40)

        async def submit(user: User) -> int:
            r = await api.client.post("/v1/jobs", json=JOB, headers=user.headers)
            return r.status_code

        async def take_back(user: User, amount: int) -> int:
            r = await api.client.post(f"/v1/admin/users/{user.id}/credits",
                                      json={"amount": -amount}, headers=ADMIN)
            return r.status_code

        codes = await asyncio.gather(*(submit(user) for _ in range(15)), take_back(user, 15),
                                     take_back(user, 10), take_back(user, 5))
        assert set(codes) <= {200, 202, 402}, codes
        account = await assert_invariants(api.pool, user.id)
        assert account.balance >= 0
        taken = sum(a for k, a, _ in await _ledger(api, user.id) if k == "adjust")
        held = 2 * codes[:15].count(202)
        assert account.balance == 40 + taken - held
        assert account.reserved == held


async def test_a_finished_job_is_refunded_once_by_ten_concurrent_admin_calls(api: Api) -> None:
    user = await api.user(credits=10)
    job = (await api.client.post("/v1/jobs", json=JOB, headers=user.headers)).json()
    path = f"/v1/admin/jobs/{job['id']}/refund"
    early = await api.client.post(path, json={}, headers=ADMIN)
    assert (early.status_code, early.json()["error"]["code"]) == (409, "job_not_refundable")
    await api.pool.execute("UPDATE generation_jobs SET status = 'running', attempt = 1 "
                           "WHERE id = $1", uuid.UUID(job["id"]))
    await api.pool.execute("SELECT genq_finalize($1, 1, 'succeeded', 2, NULL, NULL, "
                           "'[]'::jsonb, 60)", uuid.UUID(job["id"]))
    assert await api.balance(user) == (8, 0)

    answers = await asyncio.gather(*(
        api.client.post(path, json={"reason": "blurry"}, headers=ADMIN) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == [""] + [
        "true"] * 9
    assert {a.json()["entry"]["id"] for a in answers} == {answers[0].json()["entry"]["id"]}
    assert await api.balance(user) == (10, 0)
    assert (await _ledger(api, user.id))[-1] == ("adjust", 2, job["id"])
    assert [k for k, _, _ in await _ledger(api, user.id)].count("adjust") == 1
    shown = (await api.client.get("/v1/credits/ledger?limit=1", headers=user.headers)).json()
    assert shown["data"][0] | {"id": 0, "created_at": "", "reservation_id": None} == {
        "id": 0, "kind": "adjust", "amount": 2, "reserved_delta": 0, "balance_after": 10,
        "job_id": job["id"], "reservation_id": None, "reason": "blurry", "created_at": ""}
    assert await api.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'job.refund'") == 10
    await assert_invariants(api.pool, user.id)
    missing = await api.client.post(f"/v1/admin/jobs/{uuid.uuid4()}/refund", json={},
                                    headers=ADMIN)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "job_not_found")
