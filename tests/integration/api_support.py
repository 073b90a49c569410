"""Fixtures and helpers for the API tests: the real app (lifespan run) behind httpx, users made
through the admin endpoints, and a loopback TCP proxy that can cut a backing service off."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from api.app import create_app
from shared.db import Pool
from shared.settings import Settings

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


@dataclass
class User:
    """A user made through POST /v1/admin/users."""

    id: uuid.UUID
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def new_user(client: httpx.AsyncClient, credits: int = 0,
                   admin: dict[str, str] = ADMIN) -> User:
    """A user made through POST /v1/admin/users by ``admin``, granted ``credits`` if any."""
    r = await client.post(
        "/v1/admin/users", json={"email": f"{uuid.uuid4().hex}@example.com"}, headers=admin
    )
    assert r.status_code == 201, r.text
    user = User(uuid.UUID(r.json()["id"]), r.json()["api_key"])
    if credits:
        g = await client.post(
            f"/v1/admin/users/{user.id}/credits", json={"amount": credits},
            headers={**admin, "Idempotency-Key": f"seed-{user.id}"},
        )
        assert g.status_code == 200, g.text
    return user


@dataclass
class Api:
    """The running app, a client for it, and the test's own pool for looking behind it."""

    app: Starlette
    client: httpx.AsyncClient
    settings: Settings
    pool: Pool

    async def user(self, credits: int = 0) -> User:
        return await new_user(self.client, credits)

    async def balance(self, user: User) -> tuple[int, int]:
        r = await self.client.get("/v1/credits", headers=user.headers)
        assert r.status_code == 200, r.text
        return r.json()["balance"], r.json()["reserved"]


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """``create_app(settings)`` with its lifespan running, and an httpx client on it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://genq.test") as client:
            yield app, client


@pytest.fixture(name="api")
async def api_fixture(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    async with running_app(settings) as (app, client):
        yield Api(app, client, settings, pool)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` closes every connection and stops
    listening, which is what a crashed or unreachable server looks like to a client."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def url_for(self, url: str) -> str:
        """``url`` with its host:port replaced by this proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        auth = netloc[0] + netloc[1]
        return parts._replace(netloc=f"{auth}127.0.0.1:{self.port}").geturl()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for task in (asyncio.create_task(self._pipe(reader, up_writer)),
                     asyncio.create_task(self._pipe(up_reader, writer))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()


@contextlib.asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    """A started proxy to the host:port of ``url``; cut on exit."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    proxy = TcpProxy(parts.hostname, parts.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()
