"""``/v1/me``: the calling user, their plan and credits, and the identity provider accounts it
signs in with."""

from __future__ import annotations

from starlette.responses import Response

from api.me.models import Me
from api.me.reads import load_me
from api.routing import Call, Endpoint, Reply, reply


async def get_me(call: Call) -> Response:
    """GET /v1/me: who the credential belongs to."""
    async with call.ctx.pool.acquire() as conn:
        me = await load_me(conn, call.user,
                           default_quota_bytes=call.ctx.settings.library_quota_bytes)
    assert me is not None  # authenticated just now; users are never deleted by the API
    return reply(me)


ENDPOINTS = [
    Endpoint("GET", "/v1/me", get_me, "getMe", "The calling user",
             {200: Reply("The user, their plan, credits and library storage, and its external "
                         "identities", Me)},
             description="Accepts an API key or, when sign-in with the identity provider is "
                         "configured, the user's JWT (a user is created on its first request)."),
]
