"""Users and their API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import Connection
from shared.errors import EmailTaken
from shared.ledger import create_account
from sql import queries

API_KEY_PREFIX = "gq_"


@dataclass(frozen=True)
class NewUser:
    """A freshly created user with the only copy of its API key."""

    id: uuid.UUID
    email: str
    api_key: str


def hash_api_key(api_key: str) -> bytes:
    """SHA-256 of the key: keys are 256-bit random, so a fast hash is safe to store."""
    return hashlib.sha256(api_key.encode("utf-8")).digest()


def new_api_key() -> str:
    """A random key, shown once."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


async def create_user(conn: Connection, email: str) -> NewUser:
    """Create a user, their credit account and an API key, in one transaction."""
    api_key = new_api_key()
    async with conn.transaction():
        try:
            row = await conn.fetchrow(queries["create_user"], email.strip())
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken(f"a user with email {email!r} already exists") from exc
        assert row is not None
        await create_account(conn, row["id"])
        await conn.execute(
            queries["create_api_key"], row["id"], api_key[:10], hash_api_key(api_key)
        )
    return NewUser(row["id"], row["email"], api_key)


@dataclass(frozen=True)
class ApiKeyRow:
    """An API key as its owner and admins see it (never the key itself)."""

    id: uuid.UUID
    user_id: uuid.UUID
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKeyRow:
        """A row of the ``api_keys`` queries."""
        return cls(row["id"], row["user_id"], row["prefix"], row["created_at"],
                   row["last_used_at"], row["revoked_at"])


@dataclass(frozen=True)
class RevokedKey:
    """A key after a revocation: ``digest`` is its hash (what key caches hold), ``changed``
    false when it was already revoked."""

    key: ApiKeyRow
    digest: bytes
    changed: bool


async def add_api_key(conn: Connection, user_id: uuid.UUID) -> tuple[ApiKeyRow, str] | None:
    """A new key for the user, with its only copy of the secret; None: no such user."""
    api_key = new_api_key()
    row = await conn.fetchrow(queries["add_api_key"], user_id, api_key[:10],
                              hash_api_key(api_key))
    return None if row is None else (ApiKeyRow.from_row(row), api_key)


async def revoke_api_key(conn: Connection, key_id: uuid.UUID,
                         user_id: uuid.UUID | None) -> RevokedKey | None:
    """Revoke the key (``user_id``: only if it is theirs); None: no such key."""
    row = await conn.fetchrow(queries["revoke_api_key"], key_id, user_id)
    if row is None:
        return None
    return RevokedKey(ApiKeyRow.from_row(row), bytes(row["key_hash"]), row["changed"])


@dataclass(frozen=True)
class CanceledJob:
    """A queued job canceled because its user was disabled, and what came back."""

    id: uuid.UUID
    model: str
    refunded: int


async def set_disabled(conn: Connection, user_id: uuid.UUID,
                       disabled: bool) -> tuple[bool, list[CanceledJob]] | None:
    """Disable (cancel and refund every queued job too) or enable the user, in the caller's
    transaction; (was disabled before, the jobs canceled), or None for no such user. Running
    jobs are left to finish."""
    row = await conn.fetchrow(queries["set_user_disabled"], user_id, disabled)
    if row is None:
        return None
    canceled: list[CanceledJob] = []
    if disabled:
        canceled = [CanceledJob(r["id"], r["model"], r["refunded"])
                    for r in await conn.fetch(queries["cancel_user_queued_jobs"], user_id)]
    return bool(row["was_disabled"]), canceled
