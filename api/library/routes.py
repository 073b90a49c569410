"""``/v1/library``: the caller's saved items, their bytes, and saving workspace assets."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from starlette.responses import Response

from api.assets.reads import load_asset, signed_urls
from api.content import EXTENSIONS, serve_object
from api.errors import AssetNotFound, CollectionNotFound, LibraryItemNotFound
from api.library.models import LibraryItem, LibraryPage, LibrarySave, LibraryUpdate
from api.pagination import (
    PAGE_PARAMS,
    decode_time_cursor,
    page_limit,
    time_page,
)
from api.query import QueryParams, a_uuid, invalid, one_of
from api.routing import Call, Endpoint, Reply, reply
from api.spec import (
    BAD_QUERY,
    CONTENT_ERRORS,
    CONTENT_HEADERS,
    CONTENT_REPLIES,
    CONTENT_SEMANTICS,
    PAGE_PARAMETERS,
    QUERY_RULES,
    path_id,
)
from api.validation import path_uuid
from shared.db import Connection
from shared.errors import StorageQuotaExceeded
from shared.library import save_asset
from shared.logging import get_logger
from shared.storage import ObjectNotFound, StorageKeyError
from sql import queries

log = get_logger(__name__)

FILTERS = ("collection_id", "tag", "favorite", "type", "model", "visibility", "q")


async def load_item(conn: Connection, user_id: uuid.UUID, item_id: uuid.UUID,
                    *, deleted: bool = False) -> Any:
    """One item of the user (a deleted one only if ``deleted``); 404 otherwise."""
    row = await conn.fetchrow(queries["get_library_item"], item_id, user_id)
    if row is None or (row["deleted_at"] is not None and not deleted):
        raise LibraryItemNotFound.of(item_id)
    return row


def path_item_id(call: Call) -> uuid.UUID:
    """The ``{item_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "item_id", LibraryItemNotFound)


async def post_library(call: Call) -> Response:
    """POST /v1/library: 201 with the new item, 200 with the item saved before."""
    ctx, user_id = call.ctx, call.user
    body = await call.body(LibrarySave)
    async with ctx.pool.acquire() as conn:
        asset = await load_asset(conn, user_id, body.asset_id)
    saved = await save_asset(
        ctx.pool, ctx.storage, user_id, asset, title=body.title, tags=body.tags,
        collection_id=body.collection_id, is_favorite=body.is_favorite,
        visibility=body.visibility, default_quota_bytes=ctx.settings.library_quota_bytes,
    )
    if saved.outcome == "asset_not_found" or saved.item_id is None:
        if saved.outcome == "collection_not_found":
            raise CollectionNotFound.of(body.collection_id)
        raise AssetNotFound.of(body.asset_id)
    created = saved.outcome == "created"
    async with ctx.pool.acquire() as conn:
        row = await load_item(conn, user_id, saved.item_id, deleted=True)
    if created:
        log.info("library_item_saved", item_id=str(saved.item_id), asset_id=str(body.asset_id))
    item = LibraryItem.from_row(row, await signed_urls(ctx.content_url, [row]))
    return reply(item, 201 if created else 200,
                 {"Location": f"/v1/library/{item.id}"} if created else None)


def _favorite(raw: str) -> bool:
    if raw not in ("true", "false"):
        raise invalid("favorite", "must be true or false")
    return raw == "true"


def _text(field: str, longest: int) -> Any:
    def parse(raw: str) -> str:
        if len(raw) > longest:
            raise invalid(field, f"must be at most {longest} characters")
        return raw

    return parse


async def get_library(call: Call) -> Response:
    """GET /v1/library: the caller's items that are not deleted, newest first, filtered."""
    ctx, user_id = call.ctx, call.user
    query = QueryParams(call.request, (*FILTERS, *PAGE_PARAMS))
    collection_id = query.get("collection_id", a_uuid("collection_id"))
    tag = query.get("tag", _text("tag", 50))
    favorite = query.get("favorite", _favorite)
    kind = query.get("type", one_of("type", ("image", "video")))
    model = query.get("model", _text("model", 200))
    visibility = query.get("visibility", one_of("visibility", ("private", "unlisted", "public")))
    words = query.get("q", _text("q", 500))
    limit = page_limit(query)
    created_at, last_id = query.get("cursor", decode_time_cursor) or (None, None)
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            queries["list_library"], user_id, collection_id,
            tag.lower() if tag is not None else None, favorite, kind, model, visibility, words,
            created_at, last_id, limit + 1,
        )
    page, next_cursor = time_page(rows, limit)
    urls = await signed_urls(ctx.content_url, page)
    return reply(LibraryPage(data=[LibraryItem.from_row(r, urls) for r in page],
                             next_cursor=next_cursor))


async def get_library_item(call: Call) -> Response:
    """GET /v1/library/{item_id}: one item, deleted (in the trash) or not."""
    item_id = path_item_id(call)
    async with call.ctx.pool.acquire() as conn:
        row = await load_item(conn, call.user, item_id, deleted=True)
    return reply(LibraryItem.from_row(row, await signed_urls(call.ctx.content_url, [row])))


async def get_library_content(call: Call) -> Response:
    """GET or HEAD /v1/library/{item_id}/content: the bytes (not of a deleted item)."""
    item_id = path_item_id(call)
    async with call.ctx.pool.acquire() as conn:
        row = await load_item(conn, call.user, item_id)
    mime_type = row["mime_type"]
    try:
        return await serve_object(
            call.request, call.ctx.storage, row["storage_key"], media_type=mime_type,
            filename=f"{row['short_id']}.{EXTENSIONS.get(mime_type, 'bin')}",
            cache_control="private, max-age=3600",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("library_file_missing", item_id=str(item_id), error=repr(exc))
        raise LibraryItemNotFound(f"library item {item_id} has no stored content") from exc


async def _item_reply(call: Call, item_id: uuid.UUID) -> Response:
    async with call.ctx.pool.acquire() as conn:
        row = await load_item(conn, call.user, item_id, deleted=True)
    return reply(LibraryItem.from_row(row, await signed_urls(call.ctx.content_url, [row])))


async def patch_library_item(call: Call) -> Response:
    """PATCH /v1/library/{item_id}: change the fields given (not of a deleted item)."""
    item_id = path_item_id(call)
    body = await call.body(LibraryUpdate)
    given = body.model_fields_set
    try:
        async with call.ctx.pool.acquire() as conn:
            updated = await conn.fetchval(
                queries["update_library_item"], item_id, call.user,
                "title" in given, body.title, "tags" in given, body.tags,
                "is_favorite" in given, body.is_favorite, "visibility" in given,
                body.visibility, "collection_id" in given, body.collection_id,
            )
    except asyncpg.ForeignKeyViolationError as exc:
        raise CollectionNotFound.of(body.collection_id) from exc
    if updated is None:
        raise LibraryItemNotFound.of(item_id)
    return await _item_reply(call, item_id)


async def delete_library_item(call: Call) -> Response:
    """DELETE /v1/library/{item_id}: into the trash at once (204, also when already there)."""
    item_id = path_item_id(call)
    async with call.ctx.pool.acquire() as conn:
        found = await conn.fetchval(queries["delete_library_item"], item_id, call.user)
    if not found:
        raise LibraryItemNotFound.of(item_id)
    log.info("library_item_deleted", item_id=str(item_id))
    return Response(status_code=204)


async def restore_library_item(call: Call) -> Response:
    """POST /v1/library/{item_id}/restore: out of the trash, within GENQ_TRASH_TTL_S."""
    ctx, item_id = call.ctx, path_item_id(call)
    async with ctx.pool.acquire() as conn:
        outcome = await conn.fetchval(
            queries["restore_library_item"], item_id, call.user, float(ctx.settings.trash_ttl_s),
            ctx.settings.library_quota_bytes,
        )
    if outcome == "not_found":
        raise LibraryItemNotFound(f"no library item {item_id} in the trash")
    if outcome == "quota":
        raise StorageQuotaExceeded(
            "restoring this item would take your library past its storage quota")
    return await _item_reply(call, item_id)


_ITEM_LINKS = {"GetLibraryItem": {"operationId": "getLibraryItem",
                                  "parameters": {"item_id": "$response.body#/id"}}}

ENDPOINTS = [
    Endpoint(
        "POST", "/v1/library", post_library, "saveToLibrary",
        "Save a workspace asset to the library",
        {201: Reply("Saved: the new item", LibraryItem, links=_ITEM_LINKS,
                    headers={"Location": {"schema": {"type": "string"},
                                          "description": "The new item's URL."}}),
         200: Reply("This asset was saved before: that item, unchanged", LibraryItem,
                    links=_ITEM_LINKS)},
        description="Copies the asset's bytes and variants to permanent storage, so the "
                    "workspace expiry never removes them. One item per asset: saving it again "
                    "answers the same item (even from the trash, where it can be restored). "
                    "The bytes of a user's items that are not deleted may not pass their "
                    "storage quota (GET /v1/me shows it): their own, set by an admin, else "
                    "their plan's, else GENQ_LIBRARY_QUOTA_BYTES.",
        body=LibrarySave,
        errors={403: "storage_quota_exceeded: the library would pass its storage quota; "
                     "nothing was saved",
                404: "asset_not_found (expired, or another user's) or collection_not_found"},
    ),
    Endpoint(
        "GET", "/v1/library", get_library, "listLibrary", "The caller's library",
        {200: Reply("A page of items that are not deleted, newest first", LibraryPage)},
        description=QUERY_RULES + " `q` matches words of the prompt or title (full text).",
        parameters=[
            {"name": "collection_id", "in": "query",
             "schema": {"type": "string", "format": "uuid"}},
            {"name": "tag", "in": "query", "schema": {"type": "string", "maxLength": 50}},
            {"name": "favorite", "in": "query", "schema": {"enum": ["true", "false"]}},
            {"name": "type", "in": "query", "schema": {"enum": ["image", "video"]}},
            {"name": "model", "in": "query", "schema": {"type": "string", "maxLength": 200}},
            {"name": "visibility", "in": "query",
             "schema": {"enum": ["private", "unlisted", "public"]}},
            {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 500}},
            *PAGE_PARAMETERS,
        ],
        errors={422: BAD_QUERY},
    ),
    Endpoint(
        "GET", "/v1/library/{item_id}", get_library_item, "getLibraryItem",
        "One library item (also from the trash)", {200: Reply("The item", LibraryItem)},
        parameters=[path_id("item_id")], errors={404: "No such library item"},
    ),
    Endpoint(
        "PATCH", "/v1/library/{item_id}", patch_library_item, "updateLibraryItem",
        "Change a library item", {200: Reply("The item as changed", LibraryItem)},
        description="Any of title, tags, is_favorite, visibility, collection_id; a field left "
                    "out stays as it is. `collection_id: null` takes the item out of its "
                    "collection. Becoming `public` puts it at the top of the feed. A deleted "
                    "item must be restored first.",
        body=LibraryUpdate, parameters=[path_id("item_id")],
        errors={404: "library_item_not_found (or deleted), or collection_not_found"},
    ),
    Endpoint(
        "DELETE", "/v1/library/{item_id}", delete_library_item, "deleteLibraryItem",
        "Move a library item to the trash", {204: Reply("In the trash", content={})},
        description="Gone at once from listings, the feed and share links (signed URLs "
                    "already handed out expire within GENQ_URL_TTL_S); it can be restored for "
                    "GENQ_TRASH_TTL_S, then the scheduler "
                    "purges its row, file and variants. Deleting an item already in the trash "
                    "is 204 too.",
        parameters=[path_id("item_id")], errors={404: "No such library item"},
    ),
    Endpoint(
        "POST", "/v1/library/{item_id}/restore", restore_library_item, "restoreLibraryItem",
        "Take a library item out of the trash",
        {200: Reply("The item, restored (or never deleted)", LibraryItem)},
        parameters=[path_id("item_id")],
        errors={403: "storage_quota_exceeded: the library would pass its storage quota",
                404: "No such library item, or its trash time is over"},
    ),
    Endpoint(
        "GET", "/v1/library/{item_id}/content", get_library_content, "getLibraryContent",
        "Download a library item's bytes", CONTENT_REPLIES, description=CONTENT_SEMANTICS,
        parameters=[path_id("item_id"), *CONTENT_HEADERS],
        errors={**CONTENT_ERRORS, 404: "No such library item (or it is deleted)"}, head=True,
    ),
]
