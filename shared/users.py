"""Users and their API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

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
