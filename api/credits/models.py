"""What ``/v1/credits`` answers."""

from __future__ import annotations

from typing import Any

from api.assets.models import Row, _id, _time


def ledger_entry_json(row: Row) -> dict[str, Any]:
    """A credit ledger entry: ``amount`` is the signed change to the spendable balance."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "amount": row["amount"],
        "reserved_delta": row["reserved_delta"],
        "balance_after": row["balance_after"],
        "job_id": _id(row["job_id"]),
        "reservation_id": _id(row["reservation_id"]),
        "reason": row["reason"],
        "created_at": _time(row["created_at"]),
    }
