"""``/v1/credits``: the caller's balance and ledger."""

from __future__ import annotations

from starlette.responses import Response

from api.credits.models import Credits, LedgerEntry, LedgerPage
from api.pagination import (
    PAGE_PARAMS,
    decode_id_cursor,
    id_page,
    page_limit,
)
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, PAGE_PARAMETERS, QUERY_RULES
from shared import ledger
from sql import queries


async def get_credits(call: Call) -> Response:
    """GET /v1/credits: spendable balance and the total held by open reservations."""
    account = await ledger.get_account(call.ctx.pool, call.user)
    return reply(Credits(balance=account.balance, reserved=account.reserved))


async def get_ledger(call: Call) -> Response:
    """GET /v1/credits/ledger: entries newest first, cursor-paginated."""
    query = QueryParams(call.request, PAGE_PARAMS)
    limit = page_limit(query)
    before = query.get("cursor", decode_id_cursor)
    rows = await call.ctx.pool.fetch(
        queries["list_ledger_entries"], call.user, before, limit + 1
    )
    page, next_cursor = id_page(rows, limit)
    return reply(LedgerPage(data=[LedgerEntry.from_row(r) for r in page],
                            next_cursor=next_cursor))


ENDPOINTS = [
    Endpoint("GET", "/v1/credits", get_credits, "getCredits", "Balance and reserved credits",
             {200: Reply("The account", Credits)}),
    Endpoint("GET", "/v1/credits/ledger", get_ledger, "listLedger",
             "Ledger entries, newest first", {200: Reply("A page of entries", LedgerPage)},
             description=QUERY_RULES, parameters=PAGE_PARAMETERS, errors={422: BAD_QUERY}),
]
