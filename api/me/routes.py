"""``/v1/me``: the calling user and the identity provider accounts it signs in with."""

from __future__ import annotations

from starlette.responses import Response

from api.me.models import ExternalIdentity, Me
from api.routing import Call, Endpoint, Reply, reply
from sql import queries


async def get_me(call: Call) -> Response:
    """GET /v1/me: who the credential belongs to."""
    user = await call.ctx.pool.fetchrow(queries["get_user"], call.user)
    assert user is not None  # authenticated just now; users are never deleted by the API
    rows = await call.ctx.pool.fetch(queries["identities_of_user"], call.user)
    return reply(Me(
        id=user["id"], email=user["email"], created_at=user["created_at"],
        identities=[ExternalIdentity(issuer=r["issuer"], subject=r["subject"], email=r["email"],
                                     created_at=r["created_at"]) for r in rows]))


ENDPOINTS = [
    Endpoint("GET", "/v1/me", get_me, "getMe", "The calling user",
             {200: Reply("The user and its external identities", Me)},
             description="Accepts an API key or, when sign-in with the identity provider is "
                         "configured, the user's JWT (a user is created on its first request)."),
]
