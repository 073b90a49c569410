"""What a client can make the HTTP server hold before a request reaches the app: head size and
header count, head and body deadlines, idle keep-alive connections, the connection count, and
requests the parser refuses. A real uvicorn server on 127.0.0.1 serving the genq app, driven
with raw sockets."""

from __future__ import annotations

import asyncio
import contextlib

from shared.settings import Settings
from tests.integration.api_support import ADMIN
from tests.integration.http_support import (
    closed_by_server,
    error_of,
    read_response,
    request,
    serving,
)


def limited(settings: Settings, **limits: object) -> Settings:
    return settings.model_copy(update={f"http_{k}": v for k, v in limits.items()})


async def test_an_oversized_header_is_431_json_and_the_server_keeps_answering(
    settings: Settings,
) -> None:
    async with serving(limited(settings, max_header_bytes=8192)) as server:
        reader, writer = await server.connect()
        # 4 MB of one header value, written while the answer is read.
        writer.write(request("GET", "/healthz")[:-2] + b"X-Big: ")

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(64):
                    writer.write(b"a" * 65536)
                    await writer.drain()

        sending = asyncio.create_task(flood())
        refused = await read_response(reader)
        assert refused.status == 431
        error = error_of(refused)
        assert error["code"] == "request_header_fields_too_large"
        assert error["details"] == {"max_bytes": 8192}
        assert refused.headers["connection"] == "close"
        assert refused.headers["x-content-type-options"] == "nosniff"
        await closed_by_server(reader)
        await sending
        writer.close()

        # Another client is served as before.
        reader, writer = await server.connect()
        writer.write(request("GET", "/healthz"))
        ok = await read_response(reader)
        assert ok.status == 200
        assert ok.json() == {"status": "ok"}
        writer.close()


async def test_a_head_just_under_the_limit_is_served(settings: Settings) -> None:
    async with serving(limited(settings, max_header_bytes=8192)) as server:
        reader, writer = await server.connect()
        # A long header, and a second request on the same connection: the count restarts.
        head = request("GET", "/healthz", "X-Pad: " + "p" * 7000)
        assert len(head) < 8192
        writer.write(head + head)
        for _ in range(2):
            ok = await read_response(reader)
            assert ok.status == 200, ok.body
        writer.close()


async def test_too_many_headers_is_431_json(settings: Settings) -> None:
    async with serving(limited(settings, max_headers=20)) as server:
        reader, writer = await server.connect()
        writer.write(request("GET", "/healthz", *[f"X-H{i}: v" for i in range(40)]))
        refused = await read_response(reader)
        assert refused.status == 431
        error = error_of(refused)
        assert error["code"] == "request_header_fields_too_large"
        assert error["details"] == {"max_headers": 20}
        await closed_by_server(reader)
        writer.close()

        reader, writer = await server.connect()
        writer.write(request("GET", "/healthz", *[f"X-H{i}: v" for i in range(18)]))
        assert (await read_response(reader)).status == 200
        writer.close()


async def test_a_half_sent_head_is_answered_408_and_closed(settings: Settings) -> None:
    async with serving(limited(settings, header_timeout_s=0.3)) as server:
        reader, writer = await server.connect()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: genq.test\r\nX-Slow: ")
        timed_out = await read_response(reader)
        assert timed_out.status == 408
        assert error_of(timed_out)["code"] == "request_timeout"
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed(settings: Settings) -> None:
    async with serving(limited(settings, header_timeout_s=0.3)) as server:
        reader, writer = await server.connect()
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_a_trickled_head_is_closed_at_its_deadline(settings: Settings) -> None:
    # Each byte arrives well within any idle timeout; the head as a whole does not.
    async with serving(limited(settings, header_timeout_s=0.5)) as server:
        reader, writer = await server.connect()
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader)).status == 200

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /healthz HTTP/1.1\r\nHost: genq.test\r\nX-Slow: abcdefghij":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sending = asyncio.create_task(trickle())
        timed_out = await read_response(reader)
        assert timed_out.status == 408
        await closed_by_server(reader)
        sending.cancel()
        writer.close()


async def test_a_half_sent_body_is_closed_at_its_deadline(settings: Settings) -> None:
    async with serving(limited(settings, body_timeout_s=0.3)) as server:
        reader, writer = await server.connect()
        # Authorized, so the app waits for the body rather than answering 401 at once.
        writer.write(request("POST", "/v1/admin/users", "Content-Type: application/json",
                             f"Authorization: {ADMIN['Authorization']}", "Content-Length: 100")
                     + b'{"email": ')
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_an_idle_keepalive_connection_is_closed(settings: Settings) -> None:
    async with serving(limited(settings, keepalive_timeout_s=0.3)) as server:
        reader, writer = await server.connect()
        writer.write(request("GET", "/healthz"))
        ok = await read_response(reader)
        assert ok.status == 200
        assert "connection" not in ok.headers  # kept alive
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_connections_over_the_limit_are_refused_with_503_json(settings: Settings) -> None:
    async with serving(limited(settings, max_connections=2)) as server:
        held = []
        for _ in range(2):
            reader, writer = await server.connect()
            writer.write(request("GET", "/healthz"))
            assert (await read_response(reader)).status == 200
            held.append((reader, writer))

        reader, writer = await server.connect()
        refused = await read_response(reader)
        assert refused.status == 503
        error = error_of(refused)
        assert error["code"] == "too_many_connections"
        assert error["details"] == {"max_connections": 2}
        assert refused.headers["retry-after"] == "1"
        await closed_by_server(reader)
        writer.close()

        # A held connection still works; once one closes, a new one is served.
        reader, writer = held[0]
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader)).status == 200
        held[1][1].close()
        await closed_by_server(held[1][0])
        for _ in range(50):
            reader, writer = await server.connect()
            writer.write(request("GET", "/healthz"))
            answer = await read_response(reader)
            writer.close()
            if answer.status == 200:
                break
            # The server may not have seen the close yet.
            await asyncio.sleep(0.05)
        assert answer.status == 200
        held[0][1].close()


async def test_a_malformed_request_is_400_json(settings: Settings) -> None:
    async with serving(settings) as server:
        reader, writer = await server.connect()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: genq.test\r\nBad Header\r\n\r\n")
        refused = await read_response(reader)
        assert refused.status == 400
        error = error_of(refused)
        assert error["code"] == "bad_request"
        assert error["message"] == "invalid HTTP request"
        assert refused.headers["connection"] == "close"
        await closed_by_server(reader)
        writer.close()
