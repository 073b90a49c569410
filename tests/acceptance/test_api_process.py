"""``genq api`` as a real process: it migrates, serves on the port given, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from shared.embedded import free_port
from shared.settings import Settings

READY_TIMEOUT_S = 30.0


async def test_genq_api_serves_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "GENQ_DATABASE_URL": str(settings.database_url),
        "GENQ_REDIS_URL": str(settings.redis_url),
        "GENQ_DATA_DIR": str(tmp_path / "data"),
        "GENQ_ADMIN_TOKEN": "process-admin-token-0123456789abcdef",
        "GENQ_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "genq", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    ready = await client.get("/readyz")
                    break
                except httpx.TransportError:
                    assert asyncio.get_running_loop().time() < deadline, "genq api never came up"
                    await asyncio.sleep(0.1)
            assert ready.status_code == 200, ready.text
            user = await client.post(
                "/v1/admin/users", json={"email": "proc@example.com"},
                headers={"Authorization": "Bearer process-admin-token-0123456789abcdef"},
            )
            assert user.status_code == 201
            assert "x-request-id" in user.headers
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert b'"event": "request"' in stderr


def test_genq_api_refuses_a_short_admin_token_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "GENQ_ADMIN_TOKEN": "change-me", "GENQ_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "genq", "api", "--port", str(free_port())],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "GENQ_ADMIN_TOKEN" in done.stderr
    assert "at least 32 characters" in done.stderr
    assert 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"' in done.stderr
    assert "change-me" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before starting anything
