"""``GET /v1/admin/audit``: the audit log, newest first (reading it is an admin action too)."""

from __future__ import annotations

from starlette.responses import Response

from api.audit.models import AuditPage, AuditRecord, entry
from api.pagination import (
    PAGE_PARAMS,
    decode_id_cursor,
    id_page,
    page_limit,
)
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, PAGE_PARAMETERS, QUERY_RULES
from shared import audit
from sql import queries


async def get_audit(call: Call) -> Response:
    """GET /v1/admin/audit: entries newest first, cursor-paginated."""
    query = QueryParams(call.request, PAGE_PARAMS)
    limit = page_limit(query)
    before = query.get("cursor", decode_id_cursor)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(queries["list_audit"], before, limit + 1)
        await audit.record(conn, entry(call, "audit.list"))
    page, next_cursor = id_page(rows, limit)
    return reply(AuditPage(data=[AuditRecord.from_row(r) for r in page],
                           next_cursor=next_cursor))


ENDPOINTS = [
    Endpoint("GET", "/v1/admin/audit", get_audit, "listAudit",
             "The audit log of admin actions, newest first (admin)",
             {200: Reply("A page of audit entries", AuditPage)}, auth="admin",
             description=QUERY_RULES + " Every admin request that succeeds writes one entry, in "
                         "the same transaction as what it did; this one too.",
             parameters=PAGE_PARAMETERS, errors={422: BAD_QUERY}),
]
