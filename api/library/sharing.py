"""``/v1/feed`` and ``/v1/shared``: what users chose to show, to anyone, without credentials;
and the admin's takedown. Nothing here names an owner."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.responses import Response

from api.assets.reads import signed_urls
from api.audit.models import entry
from api.content import EXTENSIONS, serve_object
from api.errors import LibraryItemNotFound, echo
from api.library.models import FeedPage, LibraryItem, SharedItem, Takedown
from api.library.routes import load_item, path_item_id
from api.pagination import (
    PAGE_PARAMS,
    decode_time_cursor,
    page_limit,
    time_page,
)
from api.query import QueryParams, invalid, one_of
from api.routing import Call, Endpoint, Reply, reply
from api.spec import (
    BAD_QUERY,
    CONTENT_ERRORS,
    CONTENT_HEADERS,
    CONTENT_REPLIES,
    PAGE_PARAMETERS,
    QUERY_RULES,
    path_id,
)
from shared import audit
from shared.library import feed_read
from shared.logging import get_logger
from shared.storage import ObjectNotFound, StorageKeyError
from sql import queries

log = get_logger(__name__)

_SHORT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
#: Shared bytes may be cached by anyone, briefly: a deleted or taken-down item stops being
#: served by caches within this many seconds.
PUBLIC_MAX_AGE_S = 300


def _model(raw: str) -> str:
    if len(raw) > 200:
        raise invalid("model", "must be at most 200 characters")
    return raw


async def get_feed(call: Call) -> Response:
    """GET /v1/feed: public items, newest published first."""
    query = QueryParams(call.request, ("type", "model", *PAGE_PARAMS))
    kind = query.get("type", one_of("type", ("image", "video")))
    model = query.get("model", _model)
    limit = page_limit(query)
    sql, args = feed_read(kind, model, query.get("cursor", decode_time_cursor), limit + 1)
    async with call.ctx.pool.acquire() as conn:
        rows = await conn.fetch(sql, *args)
    page, next_cursor = time_page(rows, limit, "published_at")
    urls = await _variant_urls(call, page)
    return reply(FeedPage(data=[SharedItem.from_row(r, urls) for r in page],
                          next_cursor=next_cursor))


async def _variant_urls(call: Call, rows: Any) -> dict[str, str]:
    """The signed URL of each row's variants' keys (the content has a stable URL)."""
    keys = [v["storage_key"] for r in rows for v in (r["variants"] or {}).values()]
    return {key: await call.ctx.content_url(key) for key in keys}


async def _shared(call: Call) -> Any:
    raw = call.path["short_id"]
    if not _SHORT_ID.match(raw):
        raise LibraryItemNotFound(f"nothing shared as {echo(raw)}")
    async with call.ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["get_shared"], raw)
    if row is None:
        raise LibraryItemNotFound(f"nothing shared as {raw}")
    return row


async def get_shared(call: Call) -> Response:
    """GET /v1/shared/{short_id}: a public or unlisted item."""
    row = await _shared(call)
    return reply(SharedItem.from_row(row, await _variant_urls(call, [row])))


async def get_shared_content(call: Call) -> Response:
    """GET or HEAD /v1/shared/{short_id}/content: its bytes, cacheable by anyone."""
    row = await _shared(call)
    mime_type = row["mime_type"]
    try:
        return await serve_object(
            call.request, call.ctx.storage, row["storage_key"], media_type=mime_type,
            filename=f"{row['short_id']}.{EXTENSIONS.get(mime_type, 'bin')}",
            cache_control=f"public, max-age={PUBLIC_MAX_AGE_S}",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("library_file_missing", short_id=row["short_id"], error=repr(exc))
        raise LibraryItemNotFound(f"nothing shared as {row['short_id']}") from exc


async def post_takedown(call: Call) -> Response:
    """POST /v1/admin/library/{item_id}/takedown: hidden from the feed and share links."""
    item_id = path_item_id(call)
    body = await call.body(Takedown)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        owner: uuid.UUID | None = await conn.fetchval(
            queries["take_down_library_item"], item_id, body.reason)
        if owner is None:
            raise LibraryItemNotFound.of(item_id)
        row = await load_item(conn, owner, item_id, deleted=True)
        await audit.record(conn, entry(call, "library.takedown", "library_item", item_id,
                                       details={"user_id": str(owner), "reason": body.reason}))
    log.info("library_item_taken_down", item_id=str(item_id))
    return reply(LibraryItem.from_row(row, await signed_urls(call.ctx.content_url, [row])))


_SHORT = {"name": "short_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{11}$"}}
_NOT_SHARED = "library_item_not_found: nothing public or unlisted has this id"

ENDPOINTS = [
    Endpoint(
        "GET", "/v1/feed", get_feed, "listFeed", "The public feed",
        {200: Reply("A page of public items, newest published first", FeedPage)},
        auth="none",
        description=QUERY_RULES + " Never a private, unlisted, deleted or taken-down item, and "
                    "never its owner.",
        parameters=[{"name": "type", "in": "query", "schema": {"enum": ["image", "video"]}},
                    {"name": "model", "in": "query",
                     "schema": {"type": "string", "maxLength": 200}},
                    *PAGE_PARAMETERS],
        errors={422: BAD_QUERY},
    ),
    Endpoint(
        "GET", "/v1/shared/{short_id}", get_shared, "getShared", "A shared item (no credentials)",
        {200: Reply("The item, as in the feed", SharedItem)}, auth="none",
        parameters=[_SHORT], errors={404: _NOT_SHARED},
    ),
    Endpoint(
        "GET", "/v1/shared/{short_id}/content", get_shared_content, "getSharedContent",
        "Download a shared item's bytes (no credentials)", CONTENT_REPLIES, auth="none",
        description="Same semantics as an asset's content (Range, ETag, HEAD), with "
                    f"Cache-Control: public, max-age={PUBLIC_MAX_AGE_S}.",
        parameters=[_SHORT, *CONTENT_HEADERS], errors={**CONTENT_ERRORS, 404: _NOT_SHARED},
        head=True,
    ),
    Endpoint(
        "POST", "/v1/admin/library/{item_id}/takedown", post_takedown, "takeDownLibraryItem",
        "Take a library item down (admin)",
        {200: Reply("The item, taken down (its owner sees taken_down: true)", LibraryItem)},
        auth="admin", body=Takedown, parameters=[path_id("item_id")],
        errors={404: "No such library item"},
    ),
]
