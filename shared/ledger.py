"""The two-phase credit ledger: grant, reserve, capture, refund.

Each operation is one call of a PL/pgSQL function (sql/migrations/0001_schema.sql) that locks the
account row, so it is atomic, serialized per account, and composable inside a caller's
transaction. Each is idempotent: grants and reserves by key, settlements by reservation (a
reservation is settled exactly once; settling again returns the first result).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from shared.db import Connection, Pool
from shared.errors import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    ReservationNotFound,
)
from shared.types import ReservationStatus
from sql import queries

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
class Reservation:
    """An open reservation as returned by :func:`reserve`."""

    id: uuid.UUID
    entry_id: int
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


async def reserve(
    db: Executor,
    user_id: uuid.UUID,
    amount: int,
    *,
    expires_at: datetime,
    idempotency_key: str | None = None,
    job_id: uuid.UUID | None = None,
) -> Reservation:
    """Hold ``amount`` credits until ``expires_at``.

    Raises :class:`InsufficientCredits` (and writes nothing) if the balance is short.
    """
    _check_positive(amount)
    row = await fetchrow(
        db, queries["ledger_reserve"], user_id, amount, idempotency_key, job_id, expires_at
    )
    return Reservation(
        row["reservation_id"], row["entry_id"], row["balance_after"], row["replayed"]
    )


async def capture(db: Executor, reservation_id: uuid.UUID, amount: int) -> Settlement:
    """Capture ``amount`` (0..reserved) of a reservation and refund the rest, at once."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise InvalidAmount(f"capture amount must be a non-negative integer, got {amount!r}")
    return _settlement(await fetchrow(db, queries["ledger_settle"], reservation_id, amount))


async def refund(db: Executor, reservation_id: uuid.UUID) -> Settlement:
    """Give back the whole reservation."""
    return _settlement(await fetchrow(db, queries["ledger_settle"], reservation_id, 0))


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
