"""Reading one user's assets. Every query is scoped by user id, so another user's asset is
simply not found (404), never forbidden."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from api.assets.models import Asset
from api.errors import AssetNotFound
from api.pagination import time_page
from shared.db import Connection
from sql import queries

#: Makes the signed ``content_url`` of a storage key (``ApiContext.content_url``).
Sign = Callable[[str], Awaitable[str]]


async def signed_urls(sign: Sign, rows: Iterable[Any]) -> dict[str, str]:
    """The signed URL of each asset row's storage key, and of its variants' keys."""
    keys = []
    for r in rows:
        keys.append(r["storage_key"])
        keys.extend(v["storage_key"] for v in (r["variants"] or {}).values())
    return {key: await sign(key) for key in keys}


async def load_asset(conn: Connection, user_id: uuid.UUID, asset_id: uuid.UUID) -> Any:
    """One unexpired asset row (with its storage key); :class:`AssetNotFound` otherwise."""
    row = await conn.fetchrow(queries["get_asset"], asset_id, user_id)
    if row is None:
        raise AssetNotFound.of(asset_id)
    return row


async def list_assets(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
    sign: Sign,
) -> tuple[list[Asset], str | None]:
    """A page of assets, newest first, and the next page's cursor."""
    created_at, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        queries["list_assets"], user_id, job_id, created_at, last_id, limit + 1
    )
    page, next_cursor = time_page(rows, limit)
    urls = await signed_urls(sign, page)
    return [Asset.from_row(r, urls) for r in page], next_cursor
