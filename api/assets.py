"""``/v1/assets``: the caller's workspace assets and their bytes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from api.auth import authenticate
from api.context import ApiContext, context
from api.errors import AssetNotFound, echo
from api.pagination import DEFAULT_LIMIT, PAGE_PARAMS, decode_time_cursor, parse_limit
from api.query import QueryParams, invalid
from api.reads import list_assets, load_asset, parse_id
from api.serialize import asset_json
from shared.logging import get_logger
from shared.storage import StorageKeyError
from sql import queries

log = get_logger(__name__)

CHUNK_BYTES = 256 * 1024
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp",
               "image/gif": "gif", "image/avif": "avif", "video/mp4": "mp4",
               "video/webm": "webm", "video/quicktime": "mov", "video/x-matroska": "mkv"}


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
            conn, user_id, job_id=job_id, after=after, limit=limit
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
    _, row = await _path_asset(request)
    return JSONResponse(asset_json(row))


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


async def _stream_file(
    ctx: ApiContext, key: str, mime_type: str, filename: str, what: str
) -> Response:
    """The stored file ``key``, streamed with the content headers every asset file gets."""
    try:
        # Opened before answering: a cleanup that unlinks the file now cannot cut the stream.
        handle = await asyncio.to_thread(ctx.storage.open, key)
    except (FileNotFoundError, StorageKeyError) as exc:
        log.warning("asset_file_missing", what=what, error=repr(exc))
        raise AssetNotFound(f"{what} has no stored content") from exc
    size = os.fstat(handle.fileno()).st_size
    return StreamingResponse(
        _chunks(handle),
        media_type=mime_type,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'inline; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        },
    )


async def get_asset_content(request: Request) -> Response:
    """GET /v1/assets/{asset_id}/content: the bytes, streamed, with the stored MIME type."""
    ctx, row = await _path_asset(request)
    asset_id = row["id"]
    mime_type = row["mime_type"]
    ext = _EXTENSIONS.get(mime_type, "bin")
    return await _stream_file(ctx, row["temp_storage_path"], mime_type, f"{asset_id}.{ext}",
                              f"asset {asset_id}")


async def get_asset_variant(request: Request) -> Response:
    """GET /v1/assets/{asset_id}/variants/{kind}: a variant's bytes (``thumb``, ``web``,
    ``poster``), with the same headers as the asset's content."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    raw_id, kind = request.path_params["asset_id"], request.path_params["kind"]
    asset_id = parse_id(raw_id)
    if asset_id is None:
        raise AssetNotFound(f"no asset {raw_id}")
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["get_asset_variant"], asset_id, user_id, kind)
    if row is None:
        raise AssetNotFound(f"asset {asset_id} has no {kind!r} variant")
    ext = _EXTENSIONS.get(row["mime_type"], "bin")
    return await _stream_file(ctx, row["storage_key"], row["mime_type"],
                              f"{asset_id}.{kind}.{ext}", f"variant {kind} of asset {asset_id}")
