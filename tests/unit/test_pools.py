"""The sharded connection pool against a real HTTP/1.1 server on 127.0.0.1 that counts the
connections it is given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.pools import ShardedTransport


class _Server:
    """Answers every request with ``ok``, keeping connections alive; ``hold`` makes answers
    wait until it is set."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.open += 1
                self.most_open = max(self.most_open, self.open)
                await self.hold.wait()
                self.open -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    s = _Server()
    srv = await asyncio.start_server(s._serve, "127.0.0.1", 0)
    s.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield s


async def test_requests_one_after_another_share_one_connection(server: _Server) -> None:
    async with httpx.AsyncClient(transport=ShardedTransport(16)) as client:
        for _ in range(50):
            response = await client.get(f"http://127.0.0.1:{server.port}/")
            assert response.text == "ok"
    assert server.connections == 1


async def test_as_many_requests_at_once_as_connections_each_get_one(server: _Server) -> None:
    server.hold.clear()
    async with httpx.AsyncClient(transport=ShardedTransport(16)) as client:
        calls = [asyncio.create_task(client.get(f"http://127.0.0.1:{server.port}/"))
                 for _ in range(16)]
        while server.open < 16:
            await asyncio.sleep(0.01)
        server.hold.set()
        assert [r.text for r in await asyncio.gather(*calls)] == ["ok"] * 16
        # Kept open: as many again reuse them.
        again = await asyncio.gather(*(client.get(f"http://127.0.0.1:{server.port}/")
                                       for _ in range(16)))
        assert [r.text for r in again] == ["ok"] * 16
    assert server.most_open == 16
    assert server.connections == 16


async def test_a_streamed_response_holds_its_connection_until_closed(server: _Server) -> None:
    # One connection in all: the second request waits for the first body to be closed.
    async with httpx.AsyncClient(transport=ShardedTransport(1)) as client:
        url = f"http://127.0.0.1:{server.port}/"
        async with client.stream("GET", url) as first:
            assert await first.aread() == b"ok"
        second = await client.get(url)
        assert second.text == "ok"
    assert server.connections == 1
