"""The asyncpg pool, JSON codecs, and the migration runner."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from shared.logging import get_logger
from sql import load_migrations

log = get_logger(__name__)

# Any 64-bit constant works; it only has to be the same for every genq process.
MIGRATION_LOCK_ID = 0x67656E71_6D696772  # "genqmigr"

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    )
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool


_DECODER = json.JSONDecoder()


def decode_json(text: str) -> Any:
    """``json.loads(text)`` for a json or jsonb value as PostgreSQL sends it, in about half the
    time for small documents: jsonb's text has no whitespace around the value, so one
    ``raw_decode`` call reads it all (json.loads also matches whitespace before and after);
    anything else (a json column's own spacing, or bad text) goes through json.loads. A page of
    the feed decodes one variants object per item, as many as the rows it reads."""
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


async def _init_connection(conn: Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=decode_json, schema="pg_catalog"
        )


async def _skip_reset(conn: Connection) -> None:
    """Release without asyncpg's reset query (see :func:`create_pool`)."""


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, reset_on_release: bool = True
) -> Pool:
    """A pool whose connections encode and decode json/jsonb as Python objects.

    By default asyncpg resets every connection it takes back (advisory locks, LISTEN, session
    settings, cursors): one more round trip per use. ``reset_on_release=False`` skips that
    query, for code that keeps no session state; an open transaction is still rolled back.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # Connections are reused across very different queries; cached plans are fine.
        command_timeout=60,
        reset=None if reset_on_release else _skip_reset,
    )
    assert pool is not None
    return pool


#: How long closing a pool waits for its connections to come back before it cuts them: a
#: process that was told to stop must stop.
POOL_CLOSE_S = 10.0


async def close_pool(pool: Pool, timeout_s: float = POOL_CLOSE_S) -> None:
    """Close ``pool``, cutting its connections if they are not all back within ``timeout_s``.

    asyncpg's ``Pool.close`` waits for every connection to be released, with no bound: one
    that never comes back (a statement whose cancel request PostgreSQL never answers, a task
    that leaked a connection) would hold a stopping process forever.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await pool.close()
    except TimeoutError:
        log.warning("db_pool_close_timed_out", timeout_s=timeout_s)
        pool.terminate()


async def connect(dsn: str) -> asyncpg.Connection[asyncpg.Record]:
    """A single connection with the same codecs as the pool."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations in order, under an advisory lock; return the names applied.

    Safe to run twice, and twice at once: the second runner waits for the lock and then finds
    nothing left to do.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS genq_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM genq_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO genq_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("migration_applied", migration=migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied

