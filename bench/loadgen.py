"""An HTTP/1.1 keep-alive load generator, run as its own process (``python -m bench.loadgen``).

wrk is not on every machine; this one needs only Python. It speaks just enough HTTP/1.1 for a
server that answers with Content-Length (uvicorn does): raw asyncio protocols, requests
prebuilt as bytes, no parsing beyond the status line and the length. It runs in a separate
process so it never shares an event loop (or a GIL) with the server under test, and it reports
its own CPU time so a reader can see whether the client, not the server, was the limit.

Input: one JSON object on stdin (see :class:`Plan`); output: one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import percentile


def http_request(method: str, path: str, *, host: str, headers: dict[str, str] | None = None,
                 body: bytes = b"") -> bytes:
    """One HTTP/1.1 keep-alive request as raw bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Plan:
    """What to send. Connection ``i`` sends ``requests[i % len(requests)]``.

    ``mode`` is ``duration`` (each connection sends back to back for ``duration_s`` after
    ``warmup_s``) or ``burst`` (every connection sends one request at the same moment, once per
    round, and the round's wall time is measured).
    """

    host: str
    port: int
    requests: list[str]  # latin-1 text of the raw requests
    connections: int
    mode: str = "duration"
    duration_s: float = 10.0
    warmup_s: float = 1.0
    rounds: int = 1
    expect_status: list[int] = field(default_factory=lambda: [200, 201, 202])


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    async def send(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _connect(plan: Plan) -> list[_Conn]:
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(plan.connections):
        _, proto = await loop.create_connection(_Conn, plan.host, plan.port)
        conns.append(proto)
    return conns


def _latency_summary(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = [x * 1000 for x in latencies_s]
    return {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "max": max(ms)}


async def _duration(plan: Plan, conns: list[_Conn], raw: list[bytes]) -> dict[str, Any]:
    clock = time.perf_counter
    begin = clock() + plan.warmup_s
    end = begin + plan.duration_s
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def drive(i: int) -> None:
        nonlocal errors
        data = raw[i % len(raw)]
        conn = conns[i]
        while True:
            t0 = clock()
            if t0 >= end:
                return
            try:
                status = await conn.send(data)
            except ConnectionError:
                errors += 1
                return
            t1 = clock()
            if t0 >= begin and t1 <= end:
                latencies.append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1

    cpu0 = time.process_time()
    await asyncio.gather(*(drive(i) for i in range(len(conns))))
    cpu_s = time.process_time() - cpu0
    return {
        "requests": len(latencies), "errors": errors, "statuses": statuses,
        "elapsed_s": plan.duration_s, "rps": len(latencies) / plan.duration_s,
        "latency_ms": _latency_summary(latencies),
        "client_cpu_share": cpu_s / (plan.warmup_s + plan.duration_s),
    }


async def _burst(plan: Plan, conns: list[_Conn], raw: list[bytes]) -> dict[str, Any]:
    clock = time.perf_counter
    walls: list[float] = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(i: int, start: float) -> None:
        status = await conns[i].send(raw[i % len(raw)])
        latencies.append(clock() - start)
        statuses[status] = statuses.get(status, 0) + 1

    cpu0 = time.process_time()
    for _ in range(plan.rounds):
        start = clock()
        await asyncio.gather(*(one(i, start) for i in range(len(conns))))
        walls.append(clock() - start)
        await asyncio.sleep(0.2)
    cpu_s = time.process_time() - cpu0
    rates = sorted(len(conns) / w for w in walls)
    return {
        "requests": len(latencies), "errors": 0, "statuses": statuses,
        "round_wall_s": walls, "rate": rates[len(rates) // 2],
        "latency_ms": _latency_summary(latencies),
        "client_cpu_s": cpu_s,
    }


async def run(plan: Plan) -> dict[str, Any]:
    """Connect, send as the plan says, close; the measurements as a dict."""
    raw = [r.encode("latin-1") for r in plan.requests]
    conns = await _connect(plan)
    try:
        if plan.mode == "burst":
            return await _burst(plan, conns, raw)
        return await _duration(plan, conns, raw)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()


async def in_process(plan: Plan) -> dict[str, Any]:
    """Run ``plan`` in a new ``python -m bench.loadgen`` process and return its result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(json.dumps(asdict(plan)).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    """Read a plan from stdin, run it, print the result."""
    plan = Plan(**json.loads(sys.stdin.read()))
    result = asyncio.run(run(plan))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
