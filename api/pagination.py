"""Opaque cursors and page sizes for the list endpoints.

A cursor is URL-safe base64 of a small JSON array (the last row's sort key). Clients must treat
it as opaque; the server rejects anything it did not make.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from api.errors import ValidationFailed

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_MAX_CURSOR_CHARS = 200


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"invalid {field}", details=[{"field": field, "message": message}]
    )


def parse_limit(raw: str | None) -> int:
    """``?limit=``: default 20, values above 100 are capped to 100, below 1 rejected."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or len(raw) > 9:
        raise _invalid("limit", "must be an integer from 1 to 100")
    value = int(raw)
    if value < 1:
        raise _invalid("limit", "must be an integer from 1 to 100")
    return min(value, MAX_LIMIT)


def _encode(payload: list[str | int]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> object:
    if len(cursor) > _MAX_CURSOR_CHARS or not cursor.isascii():
        raise _invalid("cursor", "not a cursor this server made")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise _invalid("cursor", "not a cursor this server made") from exc


def encode_time_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """The cursor after a row sorted by (created_at, id) descending."""
    return _encode([created_at.isoformat(), str(row_id)])


def decode_time_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """(created_at, id) from a cursor; None for the first page."""
    if cursor is None or cursor == "":
        return None
    payload = _decode(cursor)
    bad = _invalid("cursor", "not a cursor this server made")
    if not (
        isinstance(payload, list)
        and len(payload) == 2
        and all(isinstance(part, str) for part in payload)
    ):
        raise bad
    try:
        created_at = datetime.fromisoformat(payload[0])
        row_id = uuid.UUID(payload[1])
    except ValueError as exc:
        raise bad from exc
    if created_at.tzinfo is None:
        raise bad
    return created_at, row_id


def encode_id_cursor(row_id: int) -> str:
    """The cursor after a row sorted by a bigint id descending."""
    return _encode([row_id])


def decode_id_cursor(cursor: str | None) -> int | None:
    """The id from a cursor; None for the first page."""
    if cursor is None or cursor == "":
        return None
    payload = _decode(cursor)
    if (
        not isinstance(payload, list)
        or len(payload) != 1
        or not isinstance(payload[0], int)
        or isinstance(payload[0], bool)
        or not 0 < payload[0] < 2**63
    ):
        raise _invalid("cursor", "not a cursor this server made")
    return payload[0]
