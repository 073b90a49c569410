"""``genq api`` as a real process: four parallel 50 MB request headers are each refused with 431
in the JSON error shape while ``/healthz`` keeps answering, and the process does not buffer
them (its peak RSS is read from /proc before and after); a failed admin authentication is
logged, without the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port
from shared.settings import Settings
from tests.integration.api_support import ADMIN
from tests.integration.http_support import closed_by_server, error_of, read_response, request

READY_TIMEOUT_S = 30.0
ADMIN_TOKEN = ADMIN["Authorization"].removeprefix("Bearer ")
HEADER_BYTES = 50 * 1024 * 1024
CHUNK = b"a" * (1024 * 1024)
MB = 1024 * 1024


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


@pytest.fixture
def api_process(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``genq api`` on a free port, ready; its log goes to ``tmp_path / "api.log"``."""
    port = free_port()
    env = {
        **os.environ,
        "GENQ_DATABASE_URL": str(settings.database_url),
        "GENQ_REDIS_URL": str(settings.redis_url),
        "GENQ_DATA_DIR": str(tmp_path / "data"),
        "GENQ_LOG_FORMAT": "json",
        "GENQ_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genq", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "genq api never came up"
            time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


async def _huge_header(port: int) -> tuple[int, dict[str, object]]:
    """Send a request with one 50 MB header while reading the answer; its status and error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(request("GET", "/healthz")[:-2] + b"X-Big: ")
            for _ in range(HEADER_BYTES // len(CHUNK)):
                writer.write(CHUNK)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()

    sending = asyncio.create_task(send())
    answer = await read_response(reader)
    await closed_by_server(reader)
    await sending
    writer.close()
    error = error_of(answer) if answer.status != 200 else {}
    return answer.status, error


async def _healthz_meanwhile(port: int, stop: asyncio.Event) -> list[float]:
    """GET /healthz on one keep-alive connection until ``stop``; each answer's latency (s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        writer.write(request("GET", "/healthz"))
        answer = await read_response(reader)
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200
        assert answer.json() == {"status": "ok"}
        await asyncio.sleep(0.01)
    writer.close()
    return latencies


async def test_four_parallel_50mb_headers_are_refused_and_cost_no_memory(
    api_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = api_process
    before = memory_kb(proc.pid)
    stop = asyncio.Event()
    health = asyncio.create_task(_healthz_meanwhile(port, stop))
    started = time.perf_counter()
    results = await asyncio.gather(*(_huge_header(port) for _ in range(4)))
    elapsed = time.perf_counter() - started
    stop.set()
    latencies = await health
    after = memory_kb(proc.pid)

    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(
        f"\nflood: 4 x 50 MB headers answered in {elapsed:.2f} s; "
        f"RSS {before['VmRSS'] / 1024:.1f} -> {after['VmRSS'] / 1024:.1f} MB, "
        f"peak {before['VmHWM'] / 1024:.1f} -> {after['VmHWM'] / 1024:.1f} MB; "
        f"/healthz meanwhile: {len(latencies)} answers, "
        f"max {max(latencies, default=0) * 1000:.1f} ms; statuses {[r[0] for r in results]}"
    )
    for status, error in results:
        assert status == 431
        assert error["code"] == "request_header_fields_too_large"
    assert latencies, "/healthz was never answered during the flood"
    # Buffering the headers would take at least their size; 4 x 50 MB went in.
    assert grown_mb < 4 * HEADER_BYTES / MB / 10


def test_a_failed_admin_authentication_is_logged_without_the_token(
    api_process: tuple[subprocess.Popen[bytes], int], tmp_path: Path,
) -> None:
    proc, port = api_process
    wrong = "wrong-admin-token-" + "q" * 30
    base = f"http://127.0.0.1:{port}"
    refused = httpx.post(f"{base}/v1/admin/users", json={"email": "m@example.com"},
                         headers={"Authorization": f"Bearer {wrong}"})
    assert refused.status_code == 401
    missing = httpx.post(f"{base}/v1/admin/users", json={"email": "m@example.com"})
    assert missing.status_code == 401
    created = httpx.post(f"{base}/v1/admin/users", json={"email": "m@example.com"},
                         headers=ADMIN)
    assert created.status_code == 201
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    lines = [json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines()
             if line.startswith("{")]
    failures = [line for line in lines if line["event"] == "admin_auth_failed"]
    assert [(f["reason"], f["level"], f["path"]) for f in failures] == [
        ("invalid_token", "warning", "/v1/admin/users"),
        ("missing_or_malformed", "warning", "/v1/admin/users"),
    ]
    assert all(f["client"] == "127.0.0.1" and f["request_id"] for f in failures)
    text = (tmp_path / "api.log").read_text()
    assert wrong not in text
    assert ADMIN_TOKEN not in text
