"""``/healthz`` (the process answers) and ``/readyz`` (Postgres and Redis answer too)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import ApiContext, context
from api.errors import SERVICE_ERRORS, error_response
from shared.logging import get_logger

log = get_logger(__name__)

CHECK_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    """Liveness: no dependencies checked."""
    return JSONResponse({"status": "ok"})


async def _check_postgres(ctx: ApiContext) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await ctx.pool.fetchval("SELECT 1")
    except SERVICE_ERRORS as exc:
        log.warning("readiness_check_failed", service="postgres", error=repr(exc))
        return "unavailable"
    return "ok"


async def _check_redis(ctx: ApiContext) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await ctx.redis.ping()
    except SERVICE_ERRORS as exc:
        log.warning("readiness_check_failed", service="redis", error=repr(exc))
        return "unavailable"
    return "ok"


async def readyz(request: Request) -> Response:
    """Readiness: 200 when Postgres and Redis both answer, else 503 naming the one that did not."""
    ctx = context(request)
    postgres, redis = await asyncio.gather(_check_postgres(ctx), _check_redis(ctx))
    checks = {"postgres": postgres, "redis": redis}
    if postgres == redis == "ok":
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(503, "service_unavailable", "not ready", details=checks)
