"""Database rows as the JSON objects clients see."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from shared.types import JobStatus


class Row(Protocol):
    """An asyncpg Record or a plain dict with the same keys."""

    def __getitem__(self, key: str, /) -> Any: ...


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _id(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def asset_json(row: Row, urls: Mapping[str, str]) -> dict[str, Any]:
    """A workspace asset; ``urls`` holds the signed URL (loads without a header) of its
    storage key and of its variants' keys."""
    asset_id = str(row["id"])
    return {
        "id": asset_id,
        "job_id": str(row["job_id"]),
        "index": row["asset_index"],
        "type": row["asset_type"],
        "mime_type": row["mime_type"],
        "size_bytes": row["file_size_bytes"],
        "width": row["width"],
        "height": row["height"],
        "duration_seconds": row["duration_seconds"],
        "fps": row["fps"],
        "seed": row["generation_seed"],
        "model": row["model_used"],
        "content_url": urls[row["storage_key"]],
        "variants": {
            kind: {"url": urls[v["storage_key"]], "width": v["width"],
                   "height": v["height"], "mime_type": v["mime_type"]}
            for kind, v in sorted((row["variants"] or {}).items())
        },
        "created_at": _time(row["created_at"]),
        "expires_at": _time(row["expires_at"]),
    }


def job_json(row: Row, outputs: Sequence[Row] = (),
             urls: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A generation job with its cost and unexpired outputs (``urls``: each output's signed
    ``content_url`` by storage key)."""
    urls = urls or {}
    error = None
    if row["error_code"] is not None:
        error = {"code": row["error_code"], "message": row["error_message"] or ""}
    reserved = row["reserved"]
    if reserved is None:  # a free model: nothing was reserved
        reserved = 0
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "model": row["model"],
        # The model that runs (or ran) the job: ``model``, or its fallback once it moved there.
        "ran_model": row["ran_model"] or row["model"],
        "prompt": row["prompt"],
        "num_outputs": row["num_outputs"],
        "params": row["params"],
        "seed": row["seed"],
        "cost": {
            "price_per_output": row["price_per_output"],
            "reserved": reserved,
            "captured": row["captured"] or 0,
            "refunded": row["refunded"] or 0,
        },
        "outputs": [asset_json(a, urls) for a in outputs],
        "error": error,
        "cancel_requested": row["cancel_requested_at"] is not None,
        # While the provider queues the job (fal): its place there; None otherwise.
        "provider": {"queue_position": row["provider_queue_position"]
                     if row["status"] == JobStatus.RUNNING else None},
        "created_at": _time(row["created_at"]),
        "enqueued_at": _time(row["enqueued_at"]),
        "started_at": _time(row["started_at"]),
        "finished_at": _time(row["finished_at"]),
    }


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
