"""``/healthz`` (the process answers) and ``/readyz`` (Postgres and Redis answer too)."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from api.context import ApiContext
from api.errors import SERVICE_ERRORS, error_response
from api.health.models import Health, Ready
from api.routing import Call, Endpoint, Reply, reply
from shared.logging import get_logger

log = get_logger(__name__)

CHECK_TIMEOUT_S = 2.0


async def healthz(call: Call) -> Response:
    """Liveness: no dependencies checked."""
    return reply(Health(status="ok"))


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


async def readyz(call: Call) -> Response:
    """Readiness: 200 when Postgres and Redis both answer, else 503 naming the one that did not."""
    postgres, redis = await asyncio.gather(_check_postgres(call.ctx), _check_redis(call.ctx))
    if postgres == "ok" and redis == "ok":
        return reply(Ready(status="ready", checks={"postgres": postgres, "redis": redis}))
    return error_response(503, "service_unavailable", "not ready",
                          details={"postgres": postgres, "redis": redis})


ENDPOINTS = [
    Endpoint("GET", "/healthz", healthz, "healthz", "Liveness",
             {200: Reply("The process answers", Health)}, auth="none"),
    Endpoint("GET", "/readyz", readyz, "readyz", "Readiness: Postgres and Redis",
             {200: Reply("Ready", Ready)}, auth="none",
             errors={503: "A backing service is down"}),
]
