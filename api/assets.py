"""``/v1/assets``: the caller's workspace assets and their bytes."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import authenticate
from api.content import EXTENSIONS, mime_type_of, serve_object
from api.context import ApiContext, context
from api.errors import AssetNotFound, echo
from api.pagination import DEFAULT_LIMIT, PAGE_PARAMS, decode_time_cursor, parse_limit
from api.query import QueryParams, invalid
from api.reads import list_assets, load_asset, parse_id, signed_urls
from api.serialize import asset_json
from shared.errors import NotFound
from shared.logging import get_logger
from shared.storage import ObjectNotFound, StorageKeyError
from sql import queries

log = get_logger(__name__)



class FileNotFound(NotFound):
    """Nothing is stored at this signed URL."""

    code = "file_not_found"


def _job_id(raw: str) -> uuid.UUID:
    job_id = parse_id(raw)
    if job_id is None:
        raise invalid("job_id", "must be a UUID")
    return job_id


async def get_assets(request: Request) -> Response:
    """GET /v1/assets: newest first, optionally ``?job_id=``."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    query = QueryParams(request, ("job_id", *PAGE_PARAMS))
    job_id = query.get("job_id", _job_id)
    limit = query.get("limit", parse_limit) or DEFAULT_LIMIT
    after = query.get("cursor", decode_time_cursor)
    async with ctx.pool.acquire() as conn:
        data, next_cursor = await list_assets(
            conn, user_id, job_id=job_id, after=after, limit=limit, sign=ctx.content_url
        )
    return JSONResponse({"data": data, "next_cursor": next_cursor})


async def _path_asset(request: Request) -> tuple[ApiContext, Any]:
    """The caller's asset named by ``{asset_id}``; 404 for a malformed id or another user's."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    asset_id = parse_id(request.path_params["asset_id"])
    if asset_id is None:
        raise AssetNotFound(f"no asset {echo(request.path_params['asset_id'])}")
    async with ctx.pool.acquire() as conn:
        return ctx, await load_asset(conn, user_id, asset_id)


async def get_asset(request: Request) -> Response:
    """GET /v1/assets/{asset_id}."""
    ctx, row = await _path_asset(request)
    return JSONResponse(asset_json(row, await signed_urls(ctx.content_url, [row])))


async def get_asset_content(request: Request) -> Response:
    """GET or HEAD /v1/assets/{asset_id}/content: the bytes with the stored MIME type, with the
    Authorization header (``content_url`` is the same without it)."""
    ctx, row = await _path_asset(request)
    asset_id = row["id"]
    mime_type = row["mime_type"]
    try:
        return await serve_object(
            request, ctx.storage, row["storage_key"], media_type=mime_type,
            filename=f"{asset_id}.{EXTENSIONS.get(mime_type, 'bin')}",
            cache_control="private, max-age=3600",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("asset_file_missing", asset_id=str(asset_id), error=repr(exc))
        raise AssetNotFound(f"asset {asset_id} has no stored content") from exc


async def get_asset_variant(request: Request) -> Response:
    """GET or HEAD /v1/assets/{asset_id}/variants/{kind}: a variant's bytes (``thumb``,
    ``web``, ``poster``), with the same headers as the asset's content."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    raw_id, kind = request.path_params["asset_id"], request.path_params["kind"]
    asset_id = parse_id(raw_id)
    if asset_id is None:
        raise AssetNotFound(f"no asset {echo(raw_id)}")
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["get_asset_variant"], asset_id, user_id, kind)
    if row is None:
        raise AssetNotFound(f"asset {asset_id} has no {echo(kind)!r} variant")
    try:
        return await serve_object(
            request, ctx.storage, row["storage_key"], media_type=row["mime_type"],
            filename=f"{asset_id}.{kind}.{EXTENSIONS.get(row['mime_type'], 'bin')}",
            cache_control="private, max-age=3600",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        log.warning("asset_file_missing", asset_id=str(asset_id), variant=kind,
                    error=repr(exc))
        raise AssetNotFound(f"variant {kind} of asset {asset_id} has no stored content"
                            ) from exc


async def get_file(request: Request) -> Response:
    """GET or HEAD /v1/files/{key}?exp=&sig=: a stored object by its signed URL, no header
    needed. A tampered URL is 403 ``invalid_signature``, an old one 403 ``url_expired``."""
    ctx = context(request)
    key = request.path_params["key"]
    exp = request.query_params.get("exp")
    ctx.signer.verify(key, exp, request.query_params.get("sig"))
    assert exp is not None
    remaining = max(0, int(exp) - int(time.time()))
    parts = key.split("/")
    try:
        return await serve_object(
            request, ctx.storage, key, media_type=mime_type_of(key),
            filename="-".join(parts[1:]) if len(parts) > 1 else key,
            cache_control=f"private, max-age={min(remaining, 3600)}",
        )
    except (ObjectNotFound, StorageKeyError) as exc:
        raise FileNotFound("nothing is stored at this URL (the asset may have expired)") from exc
