"""Opaque cursors and page sizes for the list endpoints.

A cursor is URL-safe base64 of a small JSON array (the last row's sort key). Clients must treat
it as opaque; the server rejects anything it did not make. The parsers here take a value the
client did send (:class:`api.query.QueryParams` has already refused empty ones).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from api.query import QueryParams
from api.query import invalid as _invalid

PAGE_PARAMS = ("limit", "cursor")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_MAX_CURSOR_CHARS = 200


def parse_limit(raw: str) -> int:
    """``?limit=``: ASCII digits (not ``²``, ``①`` or ``٣``, which ``str.isdigit`` also takes),
    at least 1; values above 100 are treated as 100, however many digits they have."""
    if not (raw.isascii() and raw.isdigit()):
        raise _invalid("limit", "must be an integer of ASCII digits, at least 1")
    digits = raw.lstrip("0")
    if not digits:
        raise _invalid("limit", "must be an integer of ASCII digits, at least 1")
    return MAX_LIMIT if len(digits) > 3 else min(int(digits), MAX_LIMIT)


def page_limit(query: QueryParams) -> int:
    """The page size a list was asked for (``?limit=``), or :data:`DEFAULT_LIMIT`."""
    return query.get("limit", parse_limit) or DEFAULT_LIMIT


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


def decode_time_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) from a cursor. The server writes times in UTC (``+00:00``), so any
    other offset is forged; refusing it also keeps a time near year 1 or 9999 from overflowing
    when it is converted to UTC."""
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
    if created_at.utcoffset() != timedelta(0):
        raise bad
    return created_at, row_id


def encode_id_cursor(row_id: int) -> str:
    """The cursor after a row sorted by a bigint id descending."""
    return _encode([row_id])


def decode_id_cursor(cursor: str) -> int:
    """The id from a cursor."""
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


def time_page(rows: list[Any], limit: int, key: str = "created_at") -> tuple[list[Any], str | None]:
    """A page read as ``limit + 1`` rows sorted by (``key``, id) descending: its first ``limit``
    rows and the cursor after the last of them (None: there is no next page)."""
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    return page, encode_time_cursor(page[-1][key], page[-1]["id"])


def id_page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """As :func:`time_page`, for rows sorted by a bigint id descending."""
    page = rows[:limit]
    return page, encode_id_cursor(page[-1]["id"]) if len(rows) > limit else None
