"""``/v1/admin``: users, their credits, keys and jobs, with an admin token.

Every admin request that succeeds writes exactly one audit row (:mod:`shared.audit`) in the same
transaction as what it did, naming the admin, the action, its target and the request id."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from api import revocations
from api.admin.models import (
    AdminUser,
    CreditGrant,
    GrantResult,
    JobRefund,
    JobRefunded,
    NewUser,
    UserCreate,
    UserDisabled,
    UserPage,
    UserSummary,
)
from api.admin.reads import load_admin_user
from api.audit.models import entry
from api.credits.models import Credits, LedgerEntry
from api.errors import JobNotFound, JobNotRefundable, UserNotFound, ValidationFailed
from api.pagination import (
    PAGE_PARAMS,
    decode_time_cursor,
    page_limit,
    time_page,
)
from api.query import QueryParams
from api.routing import REPLAYED_HEADER, Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, IDEMPOTENCY_KEY, PAGE_PARAMETERS, QUERY_RULES, REPLAYED, path_id
from api.validation import field_error, idempotency_key, path_uuid
from shared import audit, ledger
from shared.db import Connection
from shared.errors import AccountNotFound
from shared.logging import get_logger
from shared.types import JobStatus
from shared.users import create_user, set_disabled
from sql import queries

log = get_logger(__name__)

# The most characters of an email an admin may search by (an address is at most 320).
_MAX_EMAIL_CHARS = 320


def path_user_id(call: Call) -> uuid.UUID:
    """The ``{user_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "user_id", UserNotFound)


async def _balance(conn: Connection, user_id: uuid.UUID) -> int:
    """The account's balance, locked until the transaction ends (so before/after are exact)."""
    row = await conn.fetchrow(queries["lock_account"], user_id)
    if row is None:
        raise UserNotFound.of(user_id)
    balance: int = row["balance"]
    return balance


async def post_user(call: Call) -> Response:
    """POST /v1/admin/users: 201 with the new user's API key, shown this once."""
    ctx = call.ctx
    body = await call.body(UserCreate)
    async with ctx.pool.acquire() as conn, conn.transaction():
        user = await create_user(conn, body.email)
        await audit.record(conn, entry(call, "user.create", "user", user.id,
                                       details={"email": user.email}))
    log.info("user_created", new_user_id=str(user.id))
    # The body carries a secret: no cache along the way may keep it.
    return reply(NewUser(id=user.id, email=user.email, api_key=user.api_key), 201,
                 {"Cache-Control": "no-store"})


async def post_grant(call: Call) -> Response:
    """POST /v1/admin/users/{user_id}/credits: grant (positive) or take back (negative, kind
    ``adjust``, never below zero), idempotent under Idempotency-Key."""
    ctx, request = call.ctx, call.request
    user_id = path_user_id(call)
    key = idempotency_key(request.headers.get("idempotency-key"))
    body = await call.body(CreditGrant)
    stored_key = f"admin:{key}" if key is not None else None
    async with ctx.pool.acquire() as conn, conn.transaction():
        try:
            before = await _balance(conn, user_id)
            if body.amount > 0:
                grant = await ledger.grant(conn, user_id, body.amount,
                                           idempotency_key=stored_key, reason=body.reason)
                entry_id, after, replayed = grant.entry_id, grant.balance_after, grant.replayed
            else:
                adjusted = await ledger.adjust(conn, user_id, body.amount,
                                               idempotency_key=stored_key, reason=body.reason)
                entry_id, after, replayed = (adjusted.entry_id, adjusted.balance_after,
                                             adjusted.replayed)
        except AccountNotFound as exc:
            raise UserNotFound.of(user_id) from exc
        if replayed:
            after = before
        row = await conn.fetchrow(queries["get_ledger_entry"], entry_id, user_id)
        await audit.record(conn, entry(
            call, "credits.grant" if body.amount > 0 else "credits.adjust", "user", user_id,
            before=before, after=after,
            details={"amount": body.amount, "reason": body.reason, "replayed": replayed}))
    assert row is not None
    log.info("credits_granted", target_user_id=str(user_id), amount=body.amount,
             replayed=replayed)
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return reply(GrantResult(balance=after, entry=LedgerEntry.from_row(row)), headers=headers)


async def get_users(call: Call) -> Response:
    """GET /v1/admin/users: users newest first; ``email`` finds one by address."""
    query = QueryParams(call.request, (*PAGE_PARAMS, "email"))
    limit = page_limit(query)
    cursor = query.get("cursor", decode_time_cursor)
    email = query.raw("email")
    if email is not None and len(email) > _MAX_EMAIL_CHARS:
        raise ValidationFailed("invalid query", details=[
            field_error("email", f"at most {_MAX_EMAIL_CHARS} characters")])
    before_at, before_id = cursor if cursor is not None else (None, None)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(queries["find_users"], email, before_at, before_id, limit + 1)
        await audit.record(conn, entry(call, "user.search",
                                       details={"email": email} if email is not None else {}))
    page, next_cursor = time_page(rows, limit)
    return reply(UserPage(data=[
        UserSummary(id=r["id"], email=r["email"], created_at=r["created_at"],
                    disabled_at=r["disabled_at"], plan=r["plan"],
                    credits=Credits(balance=r["balance"] or 0, reserved=r["reserved"] or 0))
        for r in page], next_cursor=next_cursor))


async def get_user(call: Call) -> Response:
    """GET /v1/admin/users/{user_id}: the user, usage and keys."""
    user_id = path_user_id(call)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        user = await load_admin_user(
            conn, user_id, default_quota_bytes=call.ctx.settings.library_quota_bytes)
        if user is None:
            raise UserNotFound.of(user_id)
        await audit.record(conn, entry(call, "user.view", "user", user_id))
    return reply(user)


async def _set_disabled(call: Call, disabled: bool) -> Response:
    ctx = call.ctx
    user_id = path_user_id(call)
    async with ctx.pool.acquire() as conn, conn.transaction():
        before = await _balance(conn, user_id)
        done = await set_disabled(conn, user_id, disabled)
        if done is None:
            raise UserNotFound.of(user_id)
        was_disabled, canceled = done
        refunded = sum(job.refunded for job in canceled)
        await audit.record(conn, entry(
            call, "user.disable" if disabled else "user.enable", "user", user_id,
            before=before, after=before + refunded,
            details={"was_disabled": was_disabled, "canceled_jobs": len(canceled),
                     "refunded": refunded}))
        user = await load_admin_user(
            conn, user_id, default_quota_bytes=ctx.settings.library_quota_bytes)
    assert user is not None
    if disabled:
        await revocations.publish(ctx.redis, ctx.settings.queue_name, ctx.keys,
                                  revocations.user_message(user_id))
        for job in canceled:
            ctx.metrics.job_finished(job.model, JobStatus.CANCELED, job.refunded)
    log.info("user_disabled" if disabled else "user_enabled", target_user_id=str(user_id),
             canceled_jobs=len(canceled))
    return reply(UserDisabled(user=user, canceled_jobs=[job.id for job in canceled],
                              refunded=refunded))


async def post_disable(call: Call) -> Response:
    """POST /v1/admin/users/{user_id}/disable: refuse the user's credentials everywhere within
    2 s; cancel and refund their queued jobs (running ones finish)."""
    return await _set_disabled(call, True)


async def post_enable(call: Call) -> Response:
    """POST /v1/admin/users/{user_id}/enable: the user's keys and tokens work again."""
    return await _set_disabled(call, False)


async def post_job_refund(call: Call) -> Response:
    """POST /v1/admin/jobs/{job_id}/refund: give back what a finished job captured, once."""
    ctx = call.ctx
    job_id = path_uuid(call, "job_id", JobNotFound)
    body = await call.body(JobRefund)
    async with ctx.pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(queries["job_captured"], job_id, None)
        if job is None:
            raise JobNotFound.of(job_id)
        if not JobStatus(job["status"]).terminal or job["captured"] <= 0:
            raise JobNotRefundable(
                f"the job is {job['status']} and captured {job['captured']} credits; only a "
                "finished job's captured credits can be refunded",
                details={"status": job["status"], "captured": job["captured"]})
        user_id = job["user_id"]
        before = await _balance(conn, user_id)
        adjusted = await ledger.adjust(
            conn, user_id, job["captured"], idempotency_key=f"job-refund:{job_id}",
            reason=body.reason or f"refund of job {job_id}", job_id=job_id)
        after = before if adjusted.replayed else adjusted.balance_after
        row = await conn.fetchrow(queries["get_ledger_entry"], adjusted.entry_id, user_id)
        await audit.record(conn, entry(
            call, "job.refund", "job", job_id, before=before, after=after,
            details={"user_id": str(user_id), "amount": job["captured"],
                     "replayed": adjusted.replayed}))
    assert row is not None
    if not adjusted.replayed:
        ctx.metrics.credits_job_refunds.inc(job["captured"])
    log.info("job_refunded", job_id=str(job_id), target_user_id=str(user_id),
             amount=job["captured"], replayed=adjusted.replayed)
    return reply(JobRefunded(job_id=job_id, refunded=job["captured"], balance=after,
                             entry=LedgerEntry.from_row(row)),
                 headers={REPLAYED_HEADER: "true"} if adjusted.replayed else None)


_USER = [path_id("user_id")]
ENDPOINTS = [
    Endpoint(
        "POST", "/v1/admin/users", post_user, "createUser", "Create a user and API key (admin)",
        {201: Reply("Created", NewUser, links={"GrantCredits": {
            "operationId": "grantCredits", "parameters": {"user_id": "$response.body#/id"}}})},
        auth="admin", body=UserCreate, errors={409: "email_taken"},
    ),
    Endpoint(
        "GET", "/v1/admin/users", get_users, "listUsers", "Find users (admin)",
        {200: Reply("A page of users, newest first", UserPage)}, auth="admin",
        description=QUERY_RULES + " `email` finds the user with that address (any case).",
        parameters=[*PAGE_PARAMETERS, {"name": "email", "in": "query", "schema": {
            "type": "string", "minLength": 1, "maxLength": _MAX_EMAIL_CHARS}}],
        errors={422: BAD_QUERY},
    ),
    Endpoint(
        "GET", "/v1/admin/users/{user_id}", get_user, "getUser", "A user (admin)",
        {200: Reply("The user as GET /v1/me shows them, with their usage and keys", AdminUser)},
        auth="admin", parameters=_USER, errors={404: "No such user"},
    ),
    Endpoint(
        "POST", "/v1/admin/users/{user_id}/credits", post_grant, "grantCredits",
        "Grant or take back credits (admin, idempotent)",
        {200: Reply("Granted or taken back (or replayed)", GrantResult,
                    headers={REPLAYED_HEADER: REPLAYED})},
        auth="admin", body=CreditGrant, parameters=[*_USER, IDEMPOTENCY_KEY],
        description="A positive amount is a `grant`; a negative one takes credits back "
                    "(ledger kind `adjust`), refused with 402 insufficient_credits if the "
                    "balance would go below zero.",
        errors={402: "insufficient_credits: the balance is smaller than what is taken back",
                404: "No such user", 409: "idempotency_key_reused",
                422: "validation_error, or balance_limit_exceeded: the account would hold more "
                     "than 10^15 credits"},
    ),
    Endpoint(
        "POST", "/v1/admin/users/{user_id}/disable", post_disable, "disableUser",
        "Disable a user (admin)",
        {200: Reply("Disabled: their credentials are refused by every API process within 2 s; "
                    "their queued jobs canceled and refunded", UserDisabled)},
        auth="admin", parameters=_USER, errors={404: "No such user"},
    ),
    Endpoint(
        "POST", "/v1/admin/users/{user_id}/enable", post_enable, "enableUser",
        "Enable a disabled user (admin)",
        {200: Reply("Enabled: their keys and tokens work again", UserDisabled)},
        auth="admin", parameters=_USER, errors={404: "No such user"},
    ),
    Endpoint(
        "POST", "/v1/admin/jobs/{job_id}/refund", post_job_refund, "refundJob",
        "Refund a finished job's captured credits (admin, once)",
        {200: Reply("Refunded (or, again, the same refund)", JobRefunded,
                    headers={REPLAYED_HEADER: REPLAYED})},
        auth="admin", body=JobRefund, parameters=[path_id("job_id")],
        description="Gives back what the job captured, once however often it is called, as a "
                    "ledger `adjust` entry with the job's id.",
        errors={404: "No such job", 409: "job_not_refundable: not finished, or nothing "
                                         "captured",
                422: "balance_limit_exceeded: the account would hold more than 10^15 credits"},
    ),
]
