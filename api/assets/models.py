"""What ``/v1/assets`` answers: an asset as clients see it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol


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
