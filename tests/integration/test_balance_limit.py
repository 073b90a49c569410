"""The balance limit: an account holds at most 10^15 credits, spendable plus held. A grant past
it is a 422 ``balance_limit_exceeded`` that writes nothing, whether it comes through the admin
API or the ledger module (as ``genq credits grant`` does); a refund is never refused by it."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from api.errors import status_of
from shared import ledger
from shared.db import Pool, connect, migrate
from shared.errors import GenqError
from sql import load_migrations
from tests.factories import assert_invariants, funded_user
from tests.integration.api_support import ADMIN, Api, User, api_fixture  # noqa: F401

LIMIT = 10**15


async def _grant(api: Api, user: User, amount: int, key: str | None = None) -> tuple[int, Any]:
    headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
    r = await api.client.post(f"/v1/admin/users/{user.id}/credits", json={"amount": amount},
                              headers=headers)
    return r.status_code, r.json()


async def _ledger_rows(api: Api, user: User) -> list[dict[str, Any]]:
    r = await api.client.get("/v1/credits/ledger", params={"limit": "100"}, headers=user.headers)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


async def test_a_grant_past_the_limit_is_422_and_writes_nothing(api: Api) -> None:
    user = await api.user()
    status, body = await _grant(api, user, LIMIT, key="first")
    assert (status, body["balance"]) == (200, LIMIT)
    for amount, key in ((1, "second"), (LIMIT, None)):
        status, body = await _grant(api, user, amount, key=key)
        assert status == 422, body
        assert body["error"]["code"] == "balance_limit_exceeded"
        assert str(LIMIT) in body["error"]["message"]
        assert body["error"]["details"] == {"max_balance": LIMIT}
    assert await api.balance(user) == (LIMIT, 0)
    assert [(e["kind"], e["amount"]) for e in await _ledger_rows(api, user)] == [("grant", LIMIT)]
    # The refused key was not consumed: once there is room, it grants.
    another = await api.user()
    assert (await _grant(api, another, 7, key="second"))[0] == 200


async def test_two_grants_of_2_to_the_62_write_nothing(api: Api) -> None:
    user = await api.user(credits=5)
    for _ in range(2):
        status, body = await _grant(api, user, 2**62)
        assert status == 422, body
        assert body["error"]["code"] == "validation_error"
        assert body["error"]["details"][0]["field"] == "amount"
    assert await api.balance(user) == (5, 0)
    assert len(await _ledger_rows(api, user)) == 1


async def test_the_ledger_refuses_what_the_api_would_not_send(pool: Pool) -> None:
    user = await funded_user(pool, 0)
    for _ in range(2):
        with pytest.raises(GenqError) as refused:
            await ledger.grant(pool, user, 2**62, idempotency_key=f"big-{uuid.uuid4()}")
        assert refused.value.code == "balance_limit_exceeded"
        assert status_of(type(refused.value)) == 422
    await ledger.grant(pool, user, LIMIT - 1)
    with pytest.raises(GenqError) as refused:
        await ledger.grant(pool, user, 2)
    assert refused.value.code == "balance_limit_exceeded"
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (LIMIT - 1, 0)
    count = await pool.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = $1", user)
    assert count == 1


async def test_held_credits_count_and_a_refund_at_the_limit_goes_through(api: Api) -> None:
    user = await api.user(credits=10)
    job = await api.client.post(
        "/v1/jobs", json={"model": "local/sketch", "prompt": "p", "num_outputs": 2},
        headers=user.headers)
    assert job.status_code == 202, job.text
    held = job.json()["cost"]["reserved"]
    assert held > 0
    assert await api.balance(user) == (10 - held, held)

    # Spendable plus held would pass the limit by one, though spendable alone would not.
    status, body = await _grant(api, user, LIMIT - 10 + 1)
    assert status == 422 and body["error"]["code"] == "balance_limit_exceeded", body
    assert await api.balance(user) == (10 - held, held)

    status, body = await _grant(api, user, LIMIT - 10)
    assert (status, body["balance"]) == (200, LIMIT - held)
    cancel = await api.client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=user.headers)
    assert cancel.status_code == 200, cancel.text
    assert await api.balance(user) == (LIMIT, 0)


async def test_the_migration_stops_with_a_message_on_an_account_over_the_limit(
    empty_database_url: str,
) -> None:
    conn = await connect(empty_database_url)
    try:
        for migration in load_migrations():
            if migration.name.startswith("0010_"):
                break
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS genq_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                await conn.execute("INSERT INTO genq_migrations (version, name) VALUES ($1, $2)",
                                   migration.version, migration.name)
        user = await conn.fetchval("INSERT INTO users (email) VALUES ('big@example.com') "
                                   "RETURNING id")
        await conn.execute("INSERT INTO credit_accounts (user_id) VALUES ($1)", user)
        await conn.fetchrow("SELECT * FROM genq_grant($1, $2, NULL, NULL)", user, 2**62)

        over = r"1 credit account\(s\) hold more than 10\^15"
        with pytest.raises(asyncpg.RaiseError, match=over):
            await migrate(conn)
        assert await conn.fetchval(
            "SELECT count(*) FROM genq_migrations WHERE name LIKE '0010_%'") == 0

        await conn.execute("UPDATE credit_accounts SET balance = $1", LIMIT)
        assert "0010_balance_limit.sql" in await migrate(conn)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE credit_accounts SET balance = balance + 1")
    finally:
        await conn.close()
