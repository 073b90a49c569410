"""The HTTP/1.1 connection protocol genq's API runs under uvicorn: uvicorn's httptools protocol
with limits on what a client may make the server hold before a request reaches the app.

uvicorn alone bounds none of these on its httptools path: a request head of any size is
buffered (httptools grows each header value by concatenation, so a 50 MB header also costs
quadratic copying), a connection that sends nothing or half a request stays open forever, and
connections are not counted. Here:

- the request line and headers together may take at most ``max_header_bytes`` and
  ``max_headers`` lines, or the answer is 431 (counted per chunk read, so the normal path
  does no per-byte work in Python);
- a fresh connection, or a request once its first byte arrived, has ``header_timeout_s`` to
  complete its head (408, then closed); a body, once the head is in, has ``body_timeout_s``
  (closed: the app sees the client disconnect); an idle keep-alive connection is closed after
  ``keepalive_timeout_s``;
- a connection beyond ``max_connections`` is answered 503 at once and closed, unread;
- a request the parser refuses is 400.

Every such answer is the API's JSON error shape with ``Connection: close``; after it the
connection discards what the client still sends for a moment (so the client can read the answer
before the socket closes) and is then closed. Nothing of a refused request reaches the app.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# How long a refused connection keeps reading (and discarding) before it is closed.
LINGER_S = 1.0


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost before the app sees a request."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            max_headers=settings.http_max_headers,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
            max_connections=settings.http_max_connections,
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


# Where a connection is in its current request.
_IDLE, _HEAD, _BODY = 0, 1, 2


def error_bytes(
    status: int, code: str, message: str, details: Any = None,
    default_headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response in the API's error shape, closing the connection."""
    body = json.dumps(
        {"error": {"code": code, "message": message, "details": details}}
    ).encode("utf-8")
    parts = [STATUS_LINE[status]]
    for name, value in default_headers or ():
        parts += [name, b": ", value, b"\r\n"]
    parts += [
        b"content-type: application/json\r\n",
        b"content-length: ", str(len(body)).encode("ascii"), b"\r\n",
        b"x-content-type-options: nosniff\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(parts)


class GenqHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under :class:`HttpLimits` (bind them with
    :func:`protocol_class`)."""

    limits: ClassVar[HttpLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._phase = _IDLE
        self._head_bytes = 0  # bytes read since the current request head began (or before)
        self._header_count = 0
        self._heads_completed = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # Connection events.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            log.warning("http_connection_refused", client=self._client_host(),
                        max_connections=self.limits.max_connections)
            transport.write(error_bytes(
                503, "too_many_connections",
                "the server has too many open connections; retry later",
                {"max_connections": self.limits.max_connections},
                [*self.server_state.default_headers, (b"retry-after", b"1")],
            ))
            transport.close()
            return
        self._head_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._head_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop
        self._unset_keepalive_if_required()
        while self._phase != _BODY:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                break
            # The head may end inside the first `room` bytes; if it does not, it is too large.
            heads = self._heads_completed
            if not self._feed(data[:room]):
                return
            if self._heads_completed == heads:
                self._refuse(_Refused(
                    431, "request_header_fields_too_large",
                    f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
                    {"max_bytes": self.limits.max_header_bytes},
                ))
                return
            data = data[room:]
        if not self._feed(data):
            return
        # Deadlines start only for a request left incomplete by this read (stray bytes between
        # requests count as the start of a head).
        if self._phase == _HEAD or (self._phase == _IDLE and self._head_bytes):
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout_s, self._head_timed_out
                )
        elif self._phase == _BODY and self._body_timer is None:
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False if the request was refused (the connection is closing)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause)
            else:
                self._refuse(_Refused(400, "bad_request", "invalid HTTP request"))
            return False
        except httptools.HttpParserError:
            self._refuse(_Refused(400, "bad_request", "invalid HTTP request"))
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's plain-text 400, in the API's error shape."""
        self._refuse(_Refused(400, "bad_request", "invalid HTTP request"))

    # Parser callbacks (uvicorn's, plus the phase and the header count).

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(
                431, "request_header_fields_too_large",
                f"the request has more than {self.limits.max_headers} header lines",
                {"max_headers": self.limits.max_headers},
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._heads_completed += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # Refusals and deadlines.

    def _client_host(self) -> str | None:
        return self.client[0] if self.client else None

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _responding(self) -> bool:
        """Whether the app is answering an earlier request on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, refusal: _Refused) -> None:
        """Answer ``refusal`` (unless a response is under way), then linger and close."""
        self._refused = True
        self._cancel_timers()
        log.warning("http_request_refused", status=refusal.status, code=refusal.code,
                    client=self._client_host())
        if self.transport.is_closing():
            return
        if self._responding():
            self.transport.close()
            return
        self.transport.write(error_bytes(
            refusal.status, refusal.code, refusal.message, refusal.details,
            self.server_state.default_headers,
        ))
        # Closing with unread input would reset the connection, and a reset can destroy the
        # answer before the client reads it; so read and drop for a moment first.
        self.loop.call_later(LINGER_S, self.transport.close)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._phase == _IDLE and self._head_bytes == 0:
            # Connected and never sent a byte: nothing to answer.
            self._refused = True
            self.transport.close()
            return
        self._refuse(_Refused(
            408, "request_timeout",
            f"the request line and headers did not arrive within "
            f"{self.limits.header_timeout_s:g} s",
        ))

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        log.warning("http_body_timeout", client=self._client_host(),
                    timeout_s=self.limits.body_timeout_s)
        # The app owns this request's response; closing makes it see a client disconnect.
        self._refused = True
        self.transport.close()


def protocol_class(limits: HttpLimits) -> type[GenqHttpProtocol]:
    """:class:`GenqHttpProtocol` bound to ``limits``, for ``uvicorn.Config(http=...)``."""

    class BoundProtocol(GenqHttpProtocol):
        pass

    BoundProtocol.limits = limits
    return BoundProtocol
