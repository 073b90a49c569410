"""A real uvicorn server on 127.0.0.1 serving the genq app as ``genq api`` does, and raw-socket
HTTP/1.1 helpers to talk to it below any client library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from api.app import create_app
from api.server import server_config
from shared.settings import Settings

# Only a guard against a hung test: every wait below ends much sooner when the server behaves.
GUARD_S = 30.0


@dataclass
class Served:
    """A uvicorn server running in this event loop."""

    host: str
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Served]:
    """``create_app(settings)`` under :func:`api.server.server_config` on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        server_config(create_app(settings), settings, host="127.0.0.1", port=port)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        yield Served("127.0.0.1", port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, GUARD_S)
        sock.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response with a Content-Length body (what genq and uvicorn send)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_S)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), GUARD_S)
    return Response(int(status_line.split(" ")[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sends until it closes the connection (a reset counts)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), GUARD_S):
            chunks.append(chunk)
    return b"".join(chunks)


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: genq.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_of(response: Response) -> dict[str, Any]:
    """The error object of a JSON error response (and the JSON media type checked)."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"code", "message", "details"}, payload
    error: dict[str, Any] = payload["error"]
    return error
