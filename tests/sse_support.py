"""A Server-Sent Events client for the tests: reads ``text/event-stream`` as the EventSource
algorithm does (fields ``id``, ``event``, ``data``; comment lines kept apart), over a real HTTP
connection, and the API app served by uvicorn in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from api.app import create_app
from api.server import server_config
from shared.embedded import free_port
from shared.settings import Settings


@dataclass(frozen=True)
class Event:
    """One dispatched event."""

    id: int
    type: str
    data: dict[str, Any]


@dataclass
class Stream:
    """An open event stream: its events as they come, and the comment lines seen."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self, timeout: float = 30) -> Event | None:
        """The next event; None when the server ends the stream."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if data or fields:
                        return Event(int(fields["id"]), fields.get("event", "message"),
                                     json.loads("\n".join(data)))
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
        return None

    async def take(self, n: int, timeout: float = 60) -> list[Event]:
        """The next ``n`` events (fails if the stream ends first)."""
        events: list[Event] = []
        async with asyncio.timeout(timeout):
            while len(events) < n:
                event = await self.next(timeout)
                assert event is not None, f"the stream ended after {len(events)} of {n}"
                events.append(event)
        return events


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, path: str, headers: dict[str, str],
                      last_event_id: int | None = None) -> AsyncIterator[Stream]:
    """GET ``path`` as an event stream; closed (the connection dropped) when the block ends."""
    if last_event_id is not None:
        headers = {**headers, "Last-Event-ID": str(last_event_id)}
    async with client.stream("GET", path, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


@dataclass
class Served:
    """The API app behind a real HTTP server on 127.0.0.1."""

    app: Starlette
    base_url: str


@contextlib.asynccontextmanager
async def served_app(settings: Settings) -> AsyncIterator[Served]:
    """``create_app(settings)`` served by uvicorn (genq's HTTP protocol) in this event loop."""
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=port))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
        yield Served(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
