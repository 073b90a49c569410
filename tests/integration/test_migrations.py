"""Migrations from empty give the schema every named query expects, and are safe to repeat."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db import connect, migrate
from sql import load_migrations, queries


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    return {r["table_name"] for r in rows}


async def test_migrate_from_empty_then_every_query_prepares(empty_database_url: str) -> None:
    conn = await connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert applied == [m.name for m in load_migrations()]
        # Preparing a statement makes the server resolve every table, column and type in it.
        for name, query in queries.items():
            try:
                await conn.prepare(query)
            except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
                raise AssertionError(f"query {name!r} does not fit the schema: {exc}") from exc
    finally:
        await conn.close()
    assert {
        "users", "api_keys", "credit_accounts", "credit_reservations", "credit_ledger",
        "models", "generation_jobs", "idempotency_keys", "workspace_assets", "genq_migrations",
        "asset_variants", "user_library", "user_collections", "library_usage", "library_variants",
    } <= await _tables(empty_database_url)


async def test_migrate_twice_is_a_no_op(empty_database_url: str) -> None:
    conn = await connect(empty_database_url)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        count = await conn.fetchval("SELECT count(*) FROM genq_migrations")
    finally:
        await conn.close()
    assert first and second == []
    assert count == len(first)


async def test_concurrent_migrates_are_safe(empty_database_url: str) -> None:
    conns = [await connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM genq_migrations")
    finally:
        for c in conns:
            await c.close()
    # Exactly one runner applied each migration; the others found nothing to do.
    applied = [name for names in results for name in names]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    assert count == len(load_migrations())


async def test_workspace_assets_default_expiry_is_seven_days(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        default = await conn.fetchval(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = 'workspace_assets' AND column_name = 'expires_at'"
        )
        unique = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'workspace_assets_user_job_index_key'"
        )
    finally:
        await conn.close()
    assert "7 days" in default
    assert unique == "UNIQUE (user_id, job_id, asset_index)"


async def test_builtin_models_are_seeded(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT key, provider FROM models WHERE enabled ORDER BY key")
    finally:
        await conn.close()
    assert [(r["key"], r["provider"]) for r in rows] == [
        ("local/clip", "local"), ("local/poster", "local"), ("local/sketch", "local"),
    ]
