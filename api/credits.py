"""``/v1/credits`` and the admin endpoints that create users and grant credits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import authenticate, require_admin
from api.body import read_json
from api.context import context
from api.errors import UserNotFound, echo
from api.jobs import REPLAYED_HEADER
from api.pagination import (
    DEFAULT_LIMIT,
    PAGE_PARAMS,
    decode_id_cursor,
    encode_id_cursor,
    parse_limit,
)
from api.query import QueryParams
from api.reads import parse_id
from api.serialize import ledger_entry_json
from api.validation import CreditGrant, UserCreate, idempotency_key, parse_body
from shared import ledger
from shared.errors import AccountNotFound
from shared.logging import get_logger
from shared.users import create_user
from sql import queries

log = get_logger(__name__)


async def get_credits(request: Request) -> Response:
    """GET /v1/credits: spendable balance and the total held by open reservations."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    account = await ledger.get_account(ctx.pool, user_id)
    return JSONResponse({"balance": account.balance, "reserved": account.reserved})


async def get_ledger(request: Request) -> Response:
    """GET /v1/credits/ledger: entries newest first, cursor-paginated."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    query = QueryParams(request, PAGE_PARAMS)
    limit = query.get("limit", parse_limit) or DEFAULT_LIMIT
    before = query.get("cursor", decode_id_cursor)
    rows = await ctx.pool.fetch(queries["list_ledger_entries"], user_id, before, limit + 1)
    page = rows[:limit]
    next_cursor = encode_id_cursor(page[-1]["id"]) if len(rows) > limit else None
    return JSONResponse({"data": [ledger_entry_json(r) for r in page], "next_cursor": next_cursor})


async def post_user(request: Request) -> Response:
    """POST /v1/admin/users: 201 with the new user's API key, shown this once."""
    ctx = context(request)
    require_admin(ctx, request)
    body = parse_body(UserCreate, await read_json(request, ctx.settings.max_body_bytes))
    async with ctx.pool.acquire() as conn:
        user = await create_user(conn, body.email)
    log.info("user_created", new_user_id=str(user.id))
    # The body carries a secret: no cache along the way may keep it.
    return JSONResponse(
        {"id": str(user.id), "email": user.email, "api_key": user.api_key}, status_code=201,
        headers={"Cache-Control": "no-store"},
    )


async def post_grant(request: Request) -> Response:
    """POST /v1/admin/users/{user_id}/credits: grant, idempotent under Idempotency-Key."""
    ctx = context(request)
    require_admin(ctx, request)
    user_id = parse_id(request.path_params["user_id"])
    if user_id is None:
        raise UserNotFound(f"no user {echo(request.path_params['user_id'])}")
    key = idempotency_key(request.headers.get("idempotency-key"))
    body = parse_body(CreditGrant, await read_json(request, ctx.settings.max_body_bytes))
    async with ctx.pool.acquire() as conn:
        try:
            grant = await ledger.grant(
                conn,
                user_id,
                body.amount,
                idempotency_key=f"admin:{key}" if key is not None else None,
                reason=body.reason,
            )
        except AccountNotFound as exc:
            raise UserNotFound(f"no user {user_id}") from exc
        entry = await conn.fetchrow(queries["get_ledger_entry"], grant.entry_id, user_id)
        account = await ledger.get_account(conn, user_id)
    assert entry is not None
    log.info("credits_granted", target_user_id=str(user_id), amount=body.amount,
             replayed=grant.replayed)
    headers = {REPLAYED_HEADER: "true"} if grant.replayed else None
    return JSONResponse(
        {"balance": account.balance, "entry": ledger_entry_json(entry)}, headers=headers
    )
