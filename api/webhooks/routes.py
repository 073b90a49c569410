"""``/v1/webhooks/secret`` (read, rotate) and ``/v1/jobs/{id}/webhooks`` (a job's deliveries)."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from api.errors import JobNotFound
from api.jobs.routes import path_job_id
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, path_id
from api.webhooks.models import WebhookDeliveries, WebhookDelivery, WebhookSecret
from shared.db import Connection
from shared.webhooks import new_secret
from sql import queries

# A secret is never kept by a cache on the way.
NO_STORE = {"Cache-Control": "no-store"}


async def _secret(conn: Connection, user: uuid.UUID) -> WebhookSecret:
    row = await conn.fetchrow(queries["current_webhook_secret"], user, new_secret())
    assert row is not None
    expires = await conn.fetchval(queries["previous_webhook_secrets_expire"], user)
    return WebhookSecret(secret=row["secret"], created_at=row["created_at"],
                         previous_expires_at=expires)


async def get_secret(call: Call) -> Response:
    """GET /v1/webhooks/secret: the caller's signing secret (made on first use)."""
    QueryParams(call.request, ())
    async with call.ctx.pool.acquire() as conn:
        return reply(await _secret(conn, call.user), headers=NO_STORE)


async def rotate_secret(call: Call) -> Response:
    """POST /v1/webhooks/secret/rotate: a new secret; the current one keeps signing beside it
    for ``GENQ_WEBHOOK_SECRET_OVERLAP_S``."""
    QueryParams(call.request, ())
    overlap = float(call.ctx.settings.webhook_secret_overlap_s)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        await conn.execute(queries["lock_user"], call.user)
        await conn.execute(queries["retire_webhook_secret"], call.user, overlap)
        await conn.execute(queries["insert_webhook_secret"], call.user, new_secret())
        return reply(await _secret(conn, call.user), headers=NO_STORE)


async def get_deliveries(call: Call) -> Response:
    """GET /v1/jobs/{job_id}/webhooks: the job's deliveries and their attempts."""
    job_id = path_job_id(call)
    QueryParams(call.request, ())
    async with call.ctx.pool.acquire() as conn:
        if await conn.fetchval(queries["get_job_status"], job_id, call.user) is None:
            raise JobNotFound.of(job_id)
        rows = await conn.fetch(queries["list_job_webhook_deliveries"], job_id, call.user)
    return reply(WebhookDeliveries(data=[WebhookDelivery.from_row(r) for r in rows]))


ENDPOINTS = [
    Endpoint("GET", "/v1/webhooks/secret", get_secret, "getWebhookSecret",
             "The caller's webhook signing secret",
             {200: Reply("The current secret", WebhookSecret)},
             description="Every delivery of the caller's jobs is signed with it (Standard "
                         "Webhooks: webhook-id, webhook-timestamp, webhook-signature).",
             errors={422: BAD_QUERY}),
    Endpoint("POST", "/v1/webhooks/secret/rotate", rotate_secret, "rotateWebhookSecret",
             "Replace the webhook signing secret",
             {200: Reply("The new secret", WebhookSecret)},
             description="The previous secret keeps signing beside the new one (both "
                         "signatures in webhook-signature) until `previous_expires_at` (24 h).",
             errors={422: BAD_QUERY}),
    Endpoint("GET", "/v1/jobs/{job_id}/webhooks", get_deliveries, "listJobWebhooks",
             "A job's webhook deliveries and their attempts",
             {200: Reply("The deliveries, oldest first", WebhookDeliveries)},
             parameters=[path_id("job_id")], errors={404: "No such job", 422: BAD_QUERY}),
]
