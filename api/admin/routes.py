"""``/v1/admin``: create users and grant credits, with the admin token."""

from __future__ import annotations

from starlette.responses import Response

from api.admin.models import CreditGrant, GrantResult, NewUser, UserCreate
from api.body import read_json
from api.credits.models import LedgerEntry
from api.errors import UserNotFound, echo
from api.routing import REPLAYED_HEADER, Call, Endpoint, Reply, reply
from api.spec import IDEMPOTENCY_KEY, REPLAYED, path_id
from api.validation import idempotency_key, parse_body, parse_id
from shared import ledger
from shared.errors import AccountNotFound
from shared.logging import get_logger
from shared.users import create_user
from sql import queries

log = get_logger(__name__)


async def post_user(call: Call) -> Response:
    """POST /v1/admin/users: 201 with the new user's API key, shown this once."""
    ctx = call.ctx
    body = parse_body(UserCreate, await read_json(call.request, ctx.settings.max_body_bytes))
    async with ctx.pool.acquire() as conn:
        user = await create_user(conn, body.email)
    log.info("user_created", new_user_id=str(user.id))
    # The body carries a secret: no cache along the way may keep it.
    return reply(NewUser(id=user.id, email=user.email, api_key=user.api_key), 201,
                 {"Cache-Control": "no-store"})


async def post_grant(call: Call) -> Response:
    """POST /v1/admin/users/{user_id}/credits: grant, idempotent under Idempotency-Key."""
    ctx, request = call.ctx, call.request
    user_id = parse_id(call.path["user_id"])
    if user_id is None:
        raise UserNotFound(f"no user {echo(call.path['user_id'])}")
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
    return reply(GrantResult(balance=account.balance, entry=LedgerEntry.from_row(entry)),
                 headers=headers)


ENDPOINTS = [
    Endpoint(
        "POST", "/v1/admin/users", post_user, "createUser", "Create a user and API key (admin)",
        {201: Reply("Created", NewUser, links={"GrantCredits": {
            "operationId": "grantCredits", "parameters": {"user_id": "$response.body#/id"}}})},
        auth="admin", body=UserCreate, errors={409: "email_taken"},
    ),
    Endpoint(
        "POST", "/v1/admin/users/{user_id}/credits", post_grant, "grantCredits",
        "Grant credits (admin, idempotent)",
        {200: Reply("Granted (or replayed)", GrantResult,
                    headers={REPLAYED_HEADER: REPLAYED})},
        auth="admin", body=CreditGrant, parameters=[path_id("user_id"), IDEMPOTENCY_KEY],
        errors={404: "No such user", 409: "idempotency_key_reused",
                422: "validation_error, or balance_limit_exceeded: the account would hold more "
                     "than 10^15 credits"},
    ),
]
