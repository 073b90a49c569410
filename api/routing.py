"""The route table: every endpoint of the API as one :class:`Endpoint`, and how the app turns
the table into Starlette routes.

An endpoint says who may call it (``auth``); the app authenticates before the handler runs, so
a handler receives a :class:`Call` with the caller already known and never checks credentials
itself. The same table generates the OpenAPI document (:mod:`api.openapi`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import authenticate, require_admin
from api.body import read_json
from api.context import ApiContext, context
from api.middleware import ROUTE_STATE
from api.validation import parse_body

#: The header that marks an idempotent replay's answer.
REPLAYED_HEADER = "Idempotent-Replayed"

#: Who may call an endpoint: a user's API key, the admin token, or anyone.
Auth = Literal["user", "admin", "none"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Call:
    """One request to a handler, its caller authenticated as its endpoint asks."""

    request: Request
    ctx: ApiContext
    user_id: uuid.UUID | None = None
    #: The name of the calling admin (on an endpoint with ``auth="admin"``).
    admin_name: str | None = None

    @property
    def user(self) -> uuid.UUID:
        """The calling user (on an endpoint with ``auth="user"``)."""
        if self.user_id is None:
            raise RuntimeError("this endpoint does not authenticate a user")
        return self.user_id

    @property
    def admin(self) -> str:
        """The calling admin's name (on an endpoint with ``auth="admin"``)."""
        if self.admin_name is None:
            raise RuntimeError("this endpoint does not authenticate an admin")
        return self.admin_name

    @property
    def request_id(self) -> str | None:
        """The request's id (X-Request-ID), as the request log line shows it."""
        value = self.request.scope.get("state", {}).get("request_id")
        return value if isinstance(value, str) else None

    @property
    def path(self) -> Mapping[str, Any]:
        """The path parameters."""
        return self.request.path_params

    async def body(self, model: type[M]) -> M:
        """The request's JSON body (at most GENQ_MAX_BODY_BYTES) checked as ``model``; 413,
        415, 400 or 422 otherwise (:func:`api.body.read_json`, :func:`api.validation.parse_body`).
        """
        return parse_body(model, await read_json(self.request, self.ctx.settings.max_body_bytes))


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Reply:
    """One documented answer of an endpoint: its JSON body's model (None: no JSON body, or
    ``content`` says what it is), description, headers and links."""

    description: str
    model: type[BaseModel] | None = None
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    content: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Endpoint:
    """One operation of the API: what serves it, who may call it and what it answers.

    ``replies`` are the successful answers; ``errors`` the error statuses it can answer besides
    the ones every endpoint of its ``auth`` (and every one with a ``body``) can.
    ``parameters`` are OpenAPI parameter objects (query, path and header).
    """

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    handler: Handler
    operation_id: str
    summary: str
    replies: Mapping[int, Reply]
    auth: Auth = "user"
    description: str | None = None
    body: type[BaseModel] | None = None
    parameters: Sequence[Mapping[str, Any]] = ()
    errors: Mapping[int, str] = field(default_factory=dict)
    #: GET also answers HEAD with the same headers and no body (documented on the GET).
    head: bool = False


def reply(body: BaseModel, status: int = 200,
          headers: Mapping[str, str] | None = None) -> Response:
    """A response model as the JSON answer, serialized by pydantic in one pass (the same JSON
    as ``JSONResponse(body.model_dump(mode="json"))``, in about a third of the time)."""
    return Response(body.model_dump_json(), status_code=status, headers=headers,
                    media_type="application/json")


def _serve(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint's handler behind its authentication."""

    async def serve(request: Request) -> Response:
        ctx = context(request)
        user_id = admin = None
        if endpoint.auth == "user":
            user_id = await authenticate(ctx.keys, ctx.pool, request, ctx.tokens,
                                         ctx.settings.new_user_credits)
        elif endpoint.auth == "admin":
            admin = require_admin(ctx.settings.admins, request)
        return await endpoint.handler(Call(request, ctx, user_id, admin))

    return serve


def starlette_routes(endpoints: Iterable[Endpoint]) -> list[Route]:
    """One Starlette route per path, answering each of its methods (so a 405's Allow header
    lists them all); a path with GET answers HEAD with it."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for endpoint in endpoints:
        methods = by_path.setdefault(endpoint.path, {})
        if endpoint.method in methods:
            raise ValueError(f"two endpoints for {endpoint.method} {endpoint.path}")
        methods[endpoint.method] = _serve(endpoint)
    routes = []
    for path, methods in by_path.items():
        table = dict(methods)

        async def dispatch(request: Request, table: Mapping[str, Any] = table,
                           path: str = path) -> Response:
            # The template, not the path: what the request metrics are labelled with.
            request.scope.setdefault("state", {})[ROUTE_STATE] = path
            method = "GET" if request.method == "HEAD" else request.method
            handler: Callable[[Request], Awaitable[Response]] = table[method]
            return await handler(request)

        routes.append(Route(path, dispatch, methods=list(table)))
    return routes
