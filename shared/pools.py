"""An HTTP connection pool that stays cheap to hand out however many connections it keeps.

httpcore's pool, each time a request enters it and each time a response is closed, looks at
every connection it holds, and for each idle one asks the kernel whether the socket became
readable (a server that hung up): the cost of every request grows with the connections kept
open. :class:`ShardedTransport` keeps the same number of connections in small pools of
``SHARD_CONNECTIONS`` each and sends each request to the pool with the fewest requests in
flight (the first such, so light traffic stays in the first pools and the others stay empty).
The callers bound how many requests are in flight at once to the connections there are (the
providers' and the downloads' places), so a request always finds a pool with a connection
free or yet to open, and never waits inside one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

#: Connections per pool.
SHARD_CONNECTIONS = 4


class _Counted(httpx.AsyncByteStream):
    """A response body that tells its pool's count when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class ShardedTransport(httpx.AsyncBaseTransport):
    """``max_connections`` kept-alive connections in pools of :data:`SHARD_CONNECTIONS`;
    see the module's docstring. ``trust_env`` as for :class:`httpx.AsyncHTTPTransport` (the
    SSL certificate variables)."""

    def __init__(self, max_connections: int, *, trust_env: bool = True) -> None:
        shards = max(1, -(-max_connections // SHARD_CONNECTIONS))
        per = -(-max_connections // shards)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, trust_env=trust_env)
                       for _ in range(shards)]
        self._in_flight = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = self._in_flight.index(min(self._in_flight))
        self._in_flight[shard] += 1

        def done() -> None:
            self._in_flight[shard] -= 1

        try:
            response = await self._pools[shard].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Counted(response.stream, done)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
