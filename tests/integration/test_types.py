"""Python's value sets (shared/types.py) and the database's CHECK constraints are one definition:
a value added, renamed or dropped on one side only fails here."""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import connect, migrate
from shared.types import (
    TERMINAL_STATUSES,
    AssetType,
    JobEventType,
    JobStatus,
    LedgerKind,
    ReservationStatus,
)

# The CHECK constraints of a freshly migrated database on one column, with their definitions.
_COLUMN_CHECKS = """
SELECT c.conname, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2
ORDER BY c.conname
"""
_LITERAL = re.compile(r"'((?:[^']|'')*)'::text")


@pytest.fixture
async def migrated(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(empty_database_url)
    await migrate(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def _checks(conn: asyncpg.Connection, table: str, column: str) -> dict[str, set[str]]:
    """Each CHECK on ``table.column``: the text literals it names."""
    rows = await conn.fetch(_COLUMN_CHECKS, table, column)
    return {r["conname"]: set(_LITERAL.findall(r["def"])) for r in rows}


def _values(enum_type: type[enum.StrEnum]) -> set[str]:
    return {member.value for member in enum_type}


@pytest.mark.parametrize(("table", "column", "enum_type"), [
    ("generation_jobs", "status", JobStatus),
    ("workspace_assets", "asset_type", AssetType),
    ("models", "media_type", AssetType),
    ("credit_ledger", "kind", LedgerKind),
    ("credit_reservations", "status", ReservationStatus),
    ("job_events", "type", JobEventType),
])
async def test_check_constraint_lists_exactly_the_enum(
    migrated: asyncpg.Connection, table: str, column: str, enum_type: type[enum.StrEnum]
) -> None:
    checks = await _checks(migrated, table, column)
    # The one constraint that lists every allowed value: the others (shape, consistency) name
    # some of them in conditions, and must only name allowed ones.
    listing = [name for name, values in checks.items() if values == _values(enum_type)]
    assert listing, f"no CHECK on {table}.{column} lists {sorted(_values(enum_type))}: {checks}"
    for name, values in checks.items():
        assert values <= _values(enum_type), f"{name} names values {enum_type.__name__} lacks"


async def test_terminal_statuses_are_the_ones_with_finished_at(
    migrated: asyncpg.Connection,
) -> None:
    checks = await _checks(migrated, "generation_jobs", "finished_at")
    assert checks == {
        "generation_jobs_terminal_has_finished_at": {str(s) for s in TERMINAL_STATUSES},
    }
    assert {s for s in JobStatus if s.terminal} == TERMINAL_STATUSES
