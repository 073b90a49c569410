"""Per-request context: a request id, structlog context, an access log line, the
``X-Content-Type-Options: nosniff`` header, and the last-resort 500 in the API's JSON error
shape."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import internal_error_response
from shared.logging import get_logger
from shared.metrics import Metrics

log = get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# The route label of a request no route matched, and the methods counted by name.
UNMATCHED = "unmatched"
#: Where the router keeps a request's route template in its scope's state.
ROUTE_STATE = "route"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A client's id is kept if it is short and plain; anything else is replaced, so logs stay clean.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(value: str | None) -> str:
    """The client's request id if it is sane, else a new one."""
    if value is not None and _CLIENT_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Pure ASGI, so it adds no task or body buffering to streamed responses. With
    ``metrics``, each answer is counted by method, route template and status (a path no route
    matches is ``unmatched``, so the labels stay bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                header = value.decode("latin-1")
                break
        request_id = request_id_from(header)
        scope.setdefault("state", {})["request_id"] = request_id
        # user_id is bound here too so that the reset below also undoes the auth layer's binding.
        tokens = structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=scope["path"], user_id=None
        )
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                # No browser may guess another type for a JSON body (or any other).
                if "x-content-type-options" not in headers:
                    headers.append("X-Content-Type-Options", "nosniff")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status:
                # The response already started; nothing sane can be sent any more.
                log.exception("unhandled_exception_mid_response")
                raise
            log.exception("unhandled_exception")
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            log.info("request", status=status, duration_ms=round(elapsed * 1000, 2))
            if self.metrics is not None:
                route = scope["state"].get(ROUTE_STATE, UNMATCHED)
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"
                self.metrics.http_requests.labels(method, route, str(status)).inc()
                self.metrics.http_latency.labels(method, route).observe(elapsed)
            structlog.contextvars.reset_contextvars(**tokens)
