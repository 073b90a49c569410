"""``GET /metrics``: the Prometheus text format, behind the admin token (Prometheus scrapes with
``authorization: {credentials: <token>}``). Not an admin action: a scrape writes no audit row.

The queue's depth and oldest age are read here, once per scrape, with one query on the partial
index of queued jobs; nothing is read per request."""

from __future__ import annotations

from starlette.responses import Response

from api.routing import Call, Endpoint, Reply
from shared.metrics import CONTENT_TYPE
from sql import queries


async def get_metrics(call: Call) -> Response:
    """GET /metrics."""
    metrics = call.ctx.metrics
    row = await call.ctx.pool.fetchrow(queries["queue_depth"])
    assert row is not None
    metrics.jobs_queued.set(row["queued"])
    metrics.oldest_queued_age.set(row["oldest_age_s"])
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


ENDPOINTS = [
    Endpoint("GET", "/metrics", get_metrics, "getMetrics", "Prometheus metrics (admin)",
             {200: Reply("This API process's series, in the Prometheus text format",
                         content={"text/plain": {"schema": {"type": "string"}}})},
             auth="admin",
             description="Jobs submitted and canceled here, credits reserved, HTTP requests "
                         "by route and status, the queue's depth and oldest age. Workers and "
                         "the scheduler serve theirs on GENQ_METRICS_PORT."),
]
