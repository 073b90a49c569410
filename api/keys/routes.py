"""``/v1/me/keys``: a user makes, lists and revokes their own API keys; and the admin's
``POST /v1/admin/users/{user_id}/keys`` and ``DELETE /v1/admin/keys/{key_id}``.

A revocation commits, then every API process drops the key from its cache at once
(:mod:`api.revocations`)."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from api import revocations
from api.admin.routes import path_user_id
from api.audit.models import entry
from api.errors import ApiKeyNotFound, UserNotFound
from api.keys.models import ApiKey, ApiKeyPage, NewApiKey
from api.pagination import (
    PAGE_PARAMS,
    decode_time_cursor,
    page_limit,
    time_page,
)
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, PAGE_PARAMETERS, QUERY_RULES, path_id
from api.validation import path_uuid
from shared import audit
from shared.logging import get_logger
from shared.users import ApiKeyRow, RevokedKey, add_api_key, revoke_api_key
from sql import queries

log = get_logger(__name__)

# The answer that carries a new key: no cache along the way may keep it.
_NO_STORE = {"Cache-Control": "no-store"}


def _key_id(call: Call) -> uuid.UUID:
    """The ``{key_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "key_id", ApiKeyNotFound)


async def _revoked(call: Call, revoked: RevokedKey) -> None:
    """Drop the key from every API process's cache (after the commit)."""
    ctx = call.ctx
    await revocations.publish(ctx.redis, ctx.settings.queue_name, ctx.keys,
                              revocations.key_message(revoked.digest))
    log.info("api_key_revoked", key_id=str(revoked.key.id), owner=str(revoked.key.user_id),
             changed=revoked.changed)


async def list_my_keys(call: Call) -> Response:
    """GET /v1/me/keys: the caller's keys, newest first (revoked ones too)."""
    query = QueryParams(call.request, PAGE_PARAMS)
    limit = page_limit(query)
    cursor = query.get("cursor", decode_time_cursor)
    before_at, before_id = cursor if cursor is not None else (None, None)
    rows = await call.ctx.pool.fetch(queries["list_api_keys"], call.user, before_at, before_id,
                                     limit + 1)
    page, next_cursor = time_page(rows, limit)
    return reply(ApiKeyPage(data=[ApiKey.of(ApiKeyRow.from_row(r)) for r in page],
                            next_cursor=next_cursor))


async def post_my_key(call: Call) -> Response:
    """POST /v1/me/keys: a new key for the caller, shown once."""
    async with call.ctx.pool.acquire() as conn:
        made = await add_api_key(conn, call.user)
    assert made is not None  # the caller exists
    key, secret = made
    log.info("api_key_created", key_id=str(key.id))
    return reply(NewApiKey(**ApiKey.of(key).model_dump(), api_key=secret), 201, _NO_STORE)


async def delete_my_key(call: Call) -> Response:
    """DELETE /v1/me/keys/{key_id}: revoke one of the caller's keys (204, again too)."""
    key_id = _key_id(call)
    async with call.ctx.pool.acquire() as conn:
        revoked = await revoke_api_key(conn, key_id, call.user)
    if revoked is None:
        raise ApiKeyNotFound.of(key_id)
    await _revoked(call, revoked)
    return Response(status_code=204)


async def post_user_key(call: Call) -> Response:
    """POST /v1/admin/users/{user_id}/keys: a new key for the user, shown once."""
    user_id = path_user_id(call)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        made = await add_api_key(conn, user_id)
        if made is None:
            raise UserNotFound.of(user_id)
        key, secret = made
        await audit.record(conn, entry(call, "key.create", "user", user_id,
                                       details={"key_id": str(key.id), "prefix": key.prefix}))
    log.info("api_key_created", key_id=str(key.id), owner=str(user_id))
    return reply(NewApiKey(**ApiKey.of(key).model_dump(), api_key=secret), 201, _NO_STORE)


async def delete_any_key(call: Call) -> Response:
    """DELETE /v1/admin/keys/{key_id}: revoke any user's key (204, again too)."""
    key_id = _key_id(call)
    async with call.ctx.pool.acquire() as conn, conn.transaction():
        revoked = await revoke_api_key(conn, key_id, None)
        if revoked is None:
            raise ApiKeyNotFound.of(key_id)
        await audit.record(conn, entry(
            call, "key.revoke", "api_key", key_id,
            details={"user_id": str(revoked.key.user_id), "prefix": revoked.key.prefix,
                     "already_revoked": not revoked.changed}))
    await _revoked(call, revoked)
    return Response(status_code=204)


_KEY_GONE = "Revoked (or already revoked): refused by every API process within 2 s"
ENDPOINTS = [
    Endpoint("GET", "/v1/me/keys", list_my_keys, "listMyKeys", "The caller's API keys",
             {200: Reply("A page of keys, newest first (revoked ones too)", ApiKeyPage)},
             description=QUERY_RULES, parameters=PAGE_PARAMETERS, errors={422: BAD_QUERY}),
    Endpoint("POST", "/v1/me/keys", post_my_key, "createMyKey", "Make a new API key",
             {201: Reply("The key, shown only here", NewApiKey)}),
    Endpoint("DELETE", "/v1/me/keys/{key_id}", delete_my_key, "revokeMyKey",
             "Revoke one of the caller's API keys", {204: Reply(_KEY_GONE)},
             parameters=[path_id("key_id")], errors={404: "No such key of the caller"}),
    Endpoint("POST", "/v1/admin/users/{user_id}/keys", post_user_key, "createUserKey",
             "Make a new API key for a user (admin)",
             {201: Reply("The key, shown only here", NewApiKey)}, auth="admin",
             parameters=[path_id("user_id")], errors={404: "No such user"}),
    Endpoint("DELETE", "/v1/admin/keys/{key_id}", delete_any_key, "revokeKey",
             "Revoke any user's API key (admin)", {204: Reply(_KEY_GONE)}, auth="admin",
             parameters=[path_id("key_id")], errors={404: "No such key"}),
]
