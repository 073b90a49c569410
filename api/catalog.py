"""``/v1/models``: the enabled models clients can ask for, with prices and limits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import authenticate
from api.context import context
from api.query import QueryParams
from shared.catalog import list_models


async def get_models(request: Request) -> Response:
    """GET /v1/models."""
    ctx = context(request)
    await authenticate(ctx, request)
    QueryParams(request, ())  # takes no parameters: any is a 422, not silently ignored
    async with ctx.pool.acquire() as conn:
        models = await list_models(conn)
    return JSONResponse({"data": [
        {
            "key": m.key,
            "provider": m.provider,
            "media_type": m.media_type,
            "price_per_output": m.price_per_output,
            "max_outputs": m.max_outputs,
            "timeout_s": m.timeout_s,
            "params": m.params,
            "description": m.description,
        }
        for m in models
    ]})
