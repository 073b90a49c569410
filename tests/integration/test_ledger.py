"""The two-phase credit ledger against real PostgreSQL, under concurrency."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared import ledger
from shared.db import Pool
from shared.errors import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    ReservationNotFound,
)
from sql import queries
from tests.factories import assert_invariants, funded_user, reserve


def _deadline() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


async def _user(pool: Pool, credits: int = 0) -> uuid.UUID:
    return await funded_user(pool, credits)


async def test_grant_reserve_capture_flow(pool: Pool) -> None:
    user = await _user(pool)
    g = await ledger.grant(pool, user, 100, idempotency_key="g1", reason="welcome")
    assert (g.balance_after, g.replayed) == (100, False)

    r = await reserve(pool, user, 30, expires_at=_deadline(), idempotency_key="r1")
    assert r.balance_after == 70
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (70, 30)

    s = await ledger.settle(pool, r.id, 20)
    assert (s.status, s.captured, s.refunded, s.balance_after) == ("captured", 20, 10, 80)
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (80, 0)

    kinds = [
        (row["kind"], row["amount"], row["reserved_delta"], row["balance_after"])
        for row in await pool.fetch(queries["list_ledger_entries"], user, None, 10)
    ]
    assert kinds == [
        ("refund", 10, -10, 80),
        ("capture", 0, -20, 70),
        ("reserve", -30, 30, 70),
        ("grant", 100, 0, 100),
    ]


async def test_full_capture_and_full_refund(pool: Pool) -> None:
    user = await _user(pool, 10)
    r1 = await reserve(pool, user, 4, expires_at=_deadline())
    r2 = await reserve(pool, user, 6, expires_at=_deadline())
    s1 = await ledger.settle(pool, r1.id, 4)
    s2 = await ledger.refund(pool, r2.id)
    assert (s1.status, s1.captured, s1.refunded) == ("captured", 4, 0)
    assert (s2.status, s2.captured, s2.refunded) == ("refunded", 0, 6)
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (6, 0)


async def test_capture_zero_is_a_refund(pool: Pool) -> None:
    user = await _user(pool, 5)
    r = await reserve(pool, user, 5, expires_at=_deadline())
    s = await ledger.settle(pool, r.id, 0)
    assert (s.status, s.refunded) == ("refunded", 5)
    assert (await assert_invariants(pool, user)).balance == 5


async def test_short_balance_writes_nothing(pool: Pool) -> None:
    user = await _user(pool, 5)
    before = await pool.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = $1", user)
    with pytest.raises(InsufficientCredits):
        await reserve(pool, user, 6, expires_at=_deadline(), idempotency_key="big")
    after = await pool.fetchval("SELECT count(*) FROM credit_ledger WHERE user_id = $1", user)
    assert before == after
    assert await pool.fetchval("SELECT count(*) FROM credit_reservations") == 0
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (5, 0)
    # The key was not consumed by the failure: it works once credits arrive.
    await ledger.grant(pool, user, 1)
    r = await reserve(pool, user, 6, expires_at=_deadline(), idempotency_key="big")
    assert r.replayed is False


@pytest.mark.parametrize("amount", [0, -1, True, 2**63])
async def test_invalid_amounts_are_rejected(pool: Pool, amount: int) -> None:
    user = await _user(pool, 5)
    with pytest.raises(InvalidAmount):
        await ledger.grant(pool, user, amount)
    await assert_invariants(pool, user)


@pytest.mark.parametrize("amount", [0, -1])
async def test_the_database_refuses_to_hold_nothing(pool: Pool, amount: int) -> None:
    user = await _user(pool, 5)
    with pytest.raises(asyncpg.CheckViolationError):
        await reserve(pool, user, amount, expires_at=_deadline())
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (5, 0)


async def test_capture_more_than_reserved_is_rejected(pool: Pool) -> None:
    user = await _user(pool, 5)
    r = await reserve(pool, user, 3, expires_at=_deadline())
    with pytest.raises(InvalidAmount):
        await ledger.settle(pool, r.id, 4)
    with pytest.raises(InvalidAmount):
        await ledger.settle(pool, r.id, -1)
    reservation = await pool.fetchrow(queries["get_reservation"], r.id)
    assert reservation is not None and reservation["status"] == "open"
    await assert_invariants(pool, user)


async def test_unknown_account_and_reservation(pool: Pool) -> None:
    with pytest.raises(AccountNotFound):
        await ledger.grant(pool, uuid.uuid4(), 5)
    with pytest.raises(AccountNotFound):
        await reserve(pool, uuid.uuid4(), 5, expires_at=_deadline())
    with pytest.raises(ReservationNotFound):
        await ledger.refund(pool, uuid.uuid4())


async def test_key_reused_with_other_parameters_conflicts(pool: Pool) -> None:
    user = await _user(pool, 10)
    await ledger.grant(pool, user, 5, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        await ledger.grant(pool, user, 6, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        await reserve(pool, user, 5, expires_at=_deadline(), idempotency_key="k")
    account = await assert_invariants(pool, user)
    assert account.balance == 15


async def test_same_key_on_two_accounts_is_independent(pool: Pool) -> None:
    a, b = await _user(pool), await _user(pool)
    await ledger.grant(pool, a, 5, idempotency_key="same")
    g = await ledger.grant(pool, b, 5, idempotency_key="same")
    assert g.replayed is False
    assert (await ledger.get_account(pool, b)).balance == 5


async def test_200_concurrent_reserves_against_50_credits(pool: Pool) -> None:
    user = await _user(pool, 50)

    async def one(i: int) -> str:
        try:
            await reserve(pool, user, 1, expires_at=_deadline(), idempotency_key=f"r{i}")
        except InsufficientCredits:
            return "short"
        return "ok"

    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(200))))
    assert outcomes == Counter({"ok": 50, "short": 150})
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (0, 50)
    assert await pool.fetchval("SELECT min(balance_after) FROM credit_ledger") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM credit_reservations WHERE user_id = $1", user
    ) == 50


async def test_concurrent_replays_change_nothing(pool: Pool) -> None:
    user = await _user(pool)
    grants = await asyncio.gather(
        *(ledger.grant(pool, user, 7, idempotency_key="grant-once") for _ in range(50))
    )
    assert len({g.entry_id for g in grants}) == 1
    assert sum(not g.replayed for g in grants) == 1

    reserves = await asyncio.gather(*(
        reserve(pool, user, 3, expires_at=_deadline(), idempotency_key="hold-once")
        for _ in range(50)
    ))
    assert len({r.id for r in reserves}) == 1
    assert sum(not r.replayed for r in reserves) == 1

    settles = await asyncio.gather(
        *(ledger.settle(pool, reserves[0].id, 2) for _ in range(25)),
        *(ledger.refund(pool, reserves[0].id) for _ in range(25)),
    )
    first = [s for s in settles if not s.replayed]
    assert len(first) == 1
    # Every replay reports the one settlement that happened.
    assert {(s.status, s.captured, s.refunded) for s in settles} == {
        (first[0].status, first[0].captured, first[0].refunded)
    }
    account = await assert_invariants(pool, user)
    assert account.reserved == 0
    assert account.balance == 7 - first[0].captured
    kinds = Counter(
        r["kind"]
        for r in await pool.fetch("SELECT kind FROM credit_ledger WHERE user_id = $1", user)
    )
    assert kinds["grant"] == 1 and kinds["reserve"] == 1
    assert kinds["capture"] + kinds["refund"] in (1, 2)


async def test_random_concurrent_mix_keeps_invariants(pool: Pool) -> None:
    rng = random.Random(20261122)
    users = [await _user(pool, 20) for _ in range(5)]
    open_reservations: dict[uuid.UUID, list[uuid.UUID]] = {u: [] for u in users}
    settled_by_test: Counter[uuid.UUID] = Counter()
    all_reservations: list[uuid.UUID] = []

    async def op(i: int) -> None:
        user = rng.choice(users)
        choice = rng.random()
        try:
            if choice < 0.2:
                # Replays of earlier keys happen on purpose: same key, same amount.
                key = f"g{rng.randrange(i + 1)}:{user}"
                await ledger.grant(pool, user, 1 + hash(key) % 5, idempotency_key=key)
            elif choice < 0.6:
                r = await reserve(
                    pool, user, rng.randint(1, 6), expires_at=_deadline(),
                    idempotency_key=f"r{i}",
                )
                open_reservations[user].append(r.id)
                all_reservations.append(r.id)
            elif open_reservations[user]:
                rid = rng.choice(open_reservations[user])
                row = await pool.fetchrow(queries["get_reservation"], rid)
                assert row is not None
                if choice < 0.8:
                    s = await ledger.settle(pool, rid, rng.randint(0, row["amount"]))
                else:
                    s = await ledger.refund(pool, rid)
                if not s.replayed:
                    settled_by_test[rid] += 1
        except InsufficientCredits:
            pass

    for start in range(0, 3000, 300):
        await asyncio.gather(*(op(i) for i in range(start, start + 300)))

    for user in users:
        await assert_invariants(pool, user)
    # No reservation was settled twice, by the ledger's own account.
    assert all(n == 1 for n in settled_by_test.values())
    per_reservation = await pool.fetch(
        "SELECT r.id, r.status, r.amount, r.captured, r.refunded, "
        "  coalesce(sum(-l.reserved_delta) FILTER (WHERE l.kind IN ('capture', 'refund')), 0) "
        "    AS settled_in_ledger, "
        "  count(*) FILTER (WHERE l.kind = 'capture') AS captures, "
        "  count(*) FILTER (WHERE l.kind = 'refund') AS refunds "
        "FROM credit_reservations r JOIN credit_ledger l ON l.reservation_id = r.id "
        "GROUP BY r.id"
    )
    assert len(per_reservation) == len(all_reservations)
    for row in per_reservation:
        assert row["captures"] <= 1 and row["refunds"] <= 1
        if row["status"] == "open":
            assert row["settled_in_ledger"] == 0
            assert row["id"] not in settled_by_test
        else:
            assert row["settled_in_ledger"] == row["amount"] == row["captured"] + row["refunded"]
            assert settled_by_test[row["id"]] == 1
