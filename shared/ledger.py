"""The two-phase credit ledger, the Python face of its PL/pgSQL functions.

The rules (a balance never below zero, every hold settled exactly once, an append-only ledger
whose sums match the account) live in the database, in functions that lock the account row
first, so each operation is atomic, serialized per account and composable inside a caller's
transaction. Each is idempotent: grants and reserves by key, settlements by reservation
(settling again returns the first result). Where each operation runs in production:

- **grant**: :func:`grant` here, which calls ``genq_grant`` (sql/migrations/0001_schema.sql);
  used by the admin API (api/credits.py) and ``genq credits grant``.
- **reserve**: inside the database. The intake's one statement, ``genq_submit``
  (sql/migrations/0005_submit.sql; ``genq_submit_batch`` in 0007_submit_batch.sql runs it per
  item), inserts the job and calls ``genq_reserve`` for its price in the same transaction; no
  Python calls it alone.
- **capture**: inside the database. The worker's final write, ``genq_finalize`` and
  ``genq_finalize_batch`` (both run ``genq_finalize_set``, newest in
  sql/migrations/0038_finalize_fewer_statements.sql; called by worker/jobs.py), writes the
  job's terminal status and settles its reservation, capturing what the job made and
  refunding the rest, in one transaction.
- **adjust**: :func:`adjust` here (``genq_adjust``, sql/migrations/0026_operations.sql), an
  admin's correction either way: a negative grant, or a finished job's capture given back.
- **refund**: :func:`refund` here (``genq_settle`` capturing nothing), for a queued job canceled
  at the API, a stale hold and a job whose worker was lost (worker/maintenance.py).

Refusals come back as named constraints and ``no_data_found`` errors, which :func:`fetchrow`
raises as the domain errors of :mod:`shared.errors`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg

from shared.db import Connection, Pool
from shared.errors import (
    AccountNotFound,
    BalanceLimitExceeded,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    ReservationNotFound,
)
from shared.types import ReservationStatus
from sql import queries

# The most credits one account holds, balance + reserved: the credit_accounts_balance_limit
# constraint (sql/migrations/0010_balance_limit.sql), which only a grant can run into.
MAX_BALANCE = 10**15

_CONSTRAINT_ERRORS: dict[str, type[Exception]] = {
    "credit_accounts_balance_nonnegative": InsufficientCredits,
    "credit_ledger_idempotency_mismatch": IdempotencyConflict,
    "credit_ledger_idempotency_key": IdempotencyConflict,
    "credit_reservations_capture_in_range": InvalidAmount,
}

Executor: TypeAlias = "Connection | Pool"


@dataclass(frozen=True)
class Grant:
    """The result of a grant."""

    entry_id: int
    balance_after: int
    replayed: bool


@dataclass(frozen=True)
class Adjustment:
    """The result of an admin correction: the balance before and after (equal on a replay)."""

    entry_id: int
    balance_before: int
    balance_after: int
    replayed: bool


@dataclass(frozen=True)
class Settlement:
    """How a reservation was settled. ``replayed`` is true if it already was."""

    reservation_id: uuid.UUID
    user_id: uuid.UUID
    status: ReservationStatus
    captured: int
    refunded: int
    balance_after: int
    replayed: bool


@dataclass(frozen=True)
class Account:
    """A credit account: ``balance`` is spendable, ``reserved`` is held by open reservations."""

    user_id: uuid.UUID
    balance: int
    reserved: int


def _map_error(exc: asyncpg.PostgresError) -> Exception | None:
    constraint = getattr(exc, "constraint_name", None)
    if constraint == "credit_accounts_balance_limit":
        return BalanceLimitExceeded(
            f"an account holds at most {MAX_BALANCE} credits (spendable plus reserved); "
            "this grant would take it past that",
            details={"max_balance": MAX_BALANCE},
        )
    if constraint in _CONSTRAINT_ERRORS:
        return _CONSTRAINT_ERRORS[constraint](str(getattr(exc, "message", exc)))
    return None


async def fetchrow(db: Executor, query: str, *args: object) -> asyncpg.Record:
    """One row of a query that runs ledger functions, their refusals raised as domain errors
    (as every operation here does; for callers that fold a ledger call into their own)."""
    try:
        row = await db.fetchrow(query, *args)
    except asyncpg.NoDataFoundError as exc:
        message = str(getattr(exc, "message", exc))
        if message.startswith("no reservation"):
            raise ReservationNotFound(message) from exc
        raise AccountNotFound(message) from exc
    except (asyncpg.CheckViolationError, asyncpg.UniqueViolationError) as exc:
        mapped = _map_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
    assert row is not None
    return row


def _check_positive(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidAmount(f"amount must be a positive integer, got {amount!r}")
    if amount > 2**62:
        raise InvalidAmount("amount is too large")


async def grant(
    db: Executor,
    user_id: uuid.UUID,
    amount: int,
    *,
    idempotency_key: str | None = None,
    reason: str | None = None,
) -> Grant:
    """Add ``amount`` credits to the account. Replaying the key returns the first grant."""
    _check_positive(amount)
    row = await fetchrow(db, queries["ledger_grant"], user_id, amount, idempotency_key, reason)
    return Grant(row["entry_id"], row["balance_after"], row["replayed"])


async def adjust(
    db: Executor,
    user_id: uuid.UUID,
    amount: int,
    *,
    idempotency_key: str | None = None,
    reason: str | None = None,
    job_id: uuid.UUID | None = None,
) -> Adjustment:
    """Add ``amount`` (either sign, not 0) to the spendable balance as ledger kind ``adjust``
    (``genq_adjust``): :class:`InsufficientCredits` if it would go below zero. Replaying the
    key returns the first entry."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
        raise InvalidAmount(f"amount must be a non-zero integer, got {amount!r}")
    if abs(amount) > 2**62:
        raise InvalidAmount("amount is too large")
    row = await fetchrow(db, queries["ledger_adjust"], user_id, amount, idempotency_key, reason,
                         job_id)
    return Adjustment(row["entry_id"], row["balance_before"], row["balance_after"],
                      row["replayed"])


async def settle(db: Executor, reservation_id: uuid.UUID, captured: int) -> Settlement:
    """Settle a reservation (``genq_settle``): spend ``captured`` (0..reserved) of it and
    refund the rest, at once. A settled reservation is left as it is (``replayed``)."""
    if not isinstance(captured, int) or isinstance(captured, bool) or captured < 0:
        raise InvalidAmount(f"capture amount must be a non-negative integer, got {captured!r}")
    return _settlement(await fetchrow(db, queries["ledger_settle"], reservation_id, captured))


async def refund(db: Executor, reservation_id: uuid.UUID) -> Settlement:
    """Give back the whole reservation."""
    return await settle(db, reservation_id, 0)


def _settlement(row: asyncpg.Record) -> Settlement:
    return Settlement(
        reservation_id=row["reservation_id"],
        user_id=row["user_id"],
        status=ReservationStatus(row["status"]),
        captured=row["captured"],
        refunded=row["refunded"],
        balance_after=row["balance_after"],
        replayed=row["replayed"],
    )


async def get_account(db: Executor, user_id: uuid.UUID) -> Account:
    """The account's balance and reserved total."""
    row = await db.fetchrow(queries["get_account"], user_id)
    if row is None:
        raise AccountNotFound(f"no credit account for user {user_id}")
    return Account(row["user_id"], row["balance"], row["reserved"])


async def create_account(db: Executor, user_id: uuid.UUID) -> None:
    """Open an empty account for the user (no-op if it exists)."""
    await db.execute(queries["create_account"], user_id)
