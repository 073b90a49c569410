"""``/v1/assets``: the caller's workspace assets and their bytes."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import Response

from api.assets.models import Asset, AssetPage
from api.assets.reads import list_assets, load_asset, signed_urls
from api.content import EXTENSIONS, serve_object
from api.errors import AssetNotFound, echo
from api.pagination import PAGE_PARAMS, decode_time_cursor, page_limit
from api.query import QueryParams, a_uuid
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
from shared.logging import get_logger
from shared.storage import ObjectNotFound, StorageKeyError
from sql import queries

log = get_logger(__name__)

async def get_assets(call: Call) -> Response:
    """GET /v1/assets: newest first, optionally ``?job_id=``."""
    ctx, user_id = call.ctx, call.user
    query = QueryParams(call.request, ("job_id", *PAGE_PARAMS))
    job_id = query.get("job_id", a_uuid("job_id"))
    limit = page_limit(query)
    after = query.get("cursor", decode_time_cursor)
    async with ctx.pool.acquire() as conn:
        data, next_cursor = await list_assets(
            conn, user_id, job_id=job_id, after=after, limit=limit, sign=ctx.content_url
        )
    return reply(AssetPage(data=data, next_cursor=next_cursor))


def path_asset_id(call: Call) -> uuid.UUID:
    """The ``{asset_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "asset_id", AssetNotFound)


async def _path_asset(call: Call) -> Any:
    """The caller's asset named by ``{asset_id}``; 404 for a malformed id or another user's."""
    asset_id = path_asset_id(call)
    async with call.ctx.pool.acquire() as conn:
        return await load_asset(conn, call.user, asset_id)


async def get_asset(call: Call) -> Response:
    """GET /v1/assets/{asset_id}."""
    row = await _path_asset(call)
    return reply(Asset.from_row(row, await signed_urls(call.ctx.content_url, [row])))


async def get_asset_content(call: Call) -> Response:
    """GET or HEAD /v1/assets/{asset_id}/content: the bytes with the stored MIME type, with the
    Authorization header (``content_url`` is the same without it)."""
    row = await _path_asset(call)
    asset_id = row["id"]
    mime_type = row["mime_type"]
    try:
        return await serve_object(
            call.request, call.ctx.storage, row["storage_key"], media_type=mime_type,
            filename=f"{asset_id}.{EXTENSIONS.get(mime_type, 'bin')}",
            cache_control="private, max-age=3600",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("asset_file_missing", asset_id=str(asset_id), error=repr(exc))
        raise AssetNotFound(f"asset {asset_id} has no stored content") from exc


async def get_asset_variant(call: Call) -> Response:
    """GET or HEAD /v1/assets/{asset_id}/variants/{kind}: a variant's bytes (``thumb``,
    ``web``, ``poster``), with the same headers as the asset's content."""
    asset_id, kind = path_asset_id(call), call.path["kind"]
    async with call.ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["get_asset_variant"], asset_id, call.user, kind)
    if row is None:
        raise AssetNotFound(f"asset {asset_id} has no {echo(kind)!r} variant")
    try:
        return await serve_object(
            call.request, call.ctx.storage, row["storage_key"], media_type=row["mime_type"],
            filename=f"{asset_id}.{kind}.{EXTENSIONS.get(row['mime_type'], 'bin')}",
            cache_control="private, max-age=3600",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("asset_file_missing", asset_id=str(asset_id), variant=kind,
                    error=repr(exc))
        raise AssetNotFound(f"variant {kind} of asset {asset_id} has no stored content"
                            ) from exc


ENDPOINTS = [
    Endpoint("GET", "/v1/assets", get_assets, "listAssets", "The caller's workspace assets",
             {200: Reply("A page of assets", AssetPage)}, description=QUERY_RULES,
             parameters=[{"name": "job_id", "in": "query",
                          "schema": {"type": "string", "format": "uuid"}}, *PAGE_PARAMETERS],
             errors={422: BAD_QUERY}),
    Endpoint("GET", "/v1/assets/{asset_id}", get_asset, "getAsset", "Get an asset",
             {200: Reply("The asset", Asset)}, parameters=[path_id("asset_id")],
             errors={404: "No such asset"}),
    Endpoint("GET", "/v1/assets/{asset_id}/content", get_asset_content, "getAssetContent",
             "Download an asset's bytes", CONTENT_REPLIES, description=CONTENT_SEMANTICS,
             parameters=[path_id("asset_id"), *CONTENT_HEADERS],
             errors={**CONTENT_ERRORS, 404: "No such asset"}, head=True),
    Endpoint("GET", "/v1/assets/{asset_id}/variants/{kind}", get_asset_variant,
             "getAssetVariant", "Download an asset variant's bytes", CONTENT_REPLIES,
             description="The variant's WebP bytes with the Authorization header (its `url` on "
                         "the asset is the same without it). " + CONTENT_SEMANTICS,
             parameters=[path_id("asset_id"),
                         {"name": "kind", "in": "path", "required": True,
                          "schema": {"enum": ["thumb", "web", "poster"]}},
                         *CONTENT_HEADERS],
             errors={**CONTENT_ERRORS, 404: "No such asset or variant"}, head=True),
]
