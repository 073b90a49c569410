"""The audit log: one append-only row per admin action, written in the action's own
transaction (the table refuses UPDATE and DELETE: sql/migrations/0026_operations.sql)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.db import Connection
from sql import queries


@dataclass(frozen=True)
class AuditEntry:
    """Who did what to which target, in which request, and the amount before and after
    (a balance; None where the action moves none)."""

    actor: str
    action: str
    request_id: str | None
    target_type: str | None = None
    target_id: str | None = None
    amount_before: int | None = None
    amount_after: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


async def record(conn: Connection, entry: AuditEntry) -> int:
    """Append ``entry``; its id."""
    entry_id = await conn.fetchval(
        queries["insert_audit"], entry.actor, entry.action, entry.target_type, entry.target_id,
        entry.request_id, entry.amount_before, entry.amount_after, entry.details,
    )
    assert isinstance(entry_id, int)
    return entry_id
