"""Two real ``genq api`` processes on one database and Redis, each caching keys for 5 minutes: a
key revoked through one, and a user disabled through it, are refused by both within 2 s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.embedded import free_port
from shared.settings import Settings

ADMIN_TOKEN = "revocation-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READY_TIMEOUT_S = 60.0
WITHIN_S = 2.0


@contextlib.contextmanager
def _api_process(settings: Settings, tmp_path: Path, name: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "GENQ_DATABASE_URL": str(settings.database_url),
        "GENQ_REDIS_URL": str(settings.redis_url),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_DATA_DIR": str(tmp_path / "data"),
        "GENQ_ADMIN_TOKEN": ADMIN_TOKEN,
        "GENQ_API_KEY_CACHE_TTL_S": "300",
        "GENQ_LOG_FORMAT": "json",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genq", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_subscribed(base: str, log: Path) -> None:
    """Ready, and subscribed to invalidations (only then does it cache keys)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if ((await client.get("/readyz")).status_code == 200
                        and b"auth_invalidations_subscribed" in log.read_bytes()):
                    return
            await asyncio.sleep(0.1)


async def _refused_within(client: httpx.AsyncClient, headers: dict[str, str],
                          status: int) -> float:
    """Seconds until ``client`` answers ``status`` for ``headers``; fails past WITHIN_S."""
    started = time.monotonic()
    while True:
        r = await client.get("/v1/credits", headers=headers)
        waited = time.monotonic() - started
        if r.status_code == status:
            return waited
        assert r.status_code == 200, r.text
        assert waited < WITHIN_S, f"still {r.status_code} after {waited:.2f} s"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_a_revoked_key_and_a_disabled_user_are_refused_by_both_processes_within_2_s(
    settings: Settings, tmp_path: Path,
) -> None:
    with (_api_process(settings, tmp_path, "a") as (base_a, log_a),
          _api_process(settings, tmp_path, "b") as (base_b, log_b)):
        await asyncio.gather(_wait_subscribed(base_a, log_a), _wait_subscribed(base_b, log_b))
        async with (httpx.AsyncClient(base_url=base_a, timeout=5) as a,
                    httpx.AsyncClient(base_url=base_b, timeout=5) as b):
            made = (await a.post("/v1/admin/users", json={"email": "twice@example.com"},
                                 headers=ADMIN)).json()
            user = {"Authorization": f"Bearer {made['api_key']}"}
            spare = (await a.post("/v1/me/keys", headers=user)).json()
            doomed = {"Authorization": f"Bearer {spare['api_key']}"}
            # Both processes have now cached both keys (for 5 minutes).
            for client in (a, b):
                for headers in (user, doomed):
                    assert (await client.get("/v1/credits", headers=headers)).status_code == 200

            revoked = await a.delete(f"/v1/me/keys/{spare['id']}", headers=user)
            assert revoked.status_code == 204
            waited = await asyncio.gather(_refused_within(a, doomed, 401),
                                          _refused_within(b, doomed, 401))
            assert max(waited) < WITHIN_S
            # The other key of the same user still works on both.
            for client in (a, b):
                assert (await client.get("/v1/credits", headers=user)).status_code == 200

            # Two jobs wait in the queue (no worker runs here) when the user is disabled.
            await a.post(f"/v1/admin/users/{made['id']}/credits", json={"amount": 10},
                         headers=ADMIN)
            for _ in range(2):
                job = await b.post("/v1/jobs", headers=user, json={
                    "model": "local/sketch", "prompt": "p", "num_outputs": 2, "params": {}})
                assert job.status_code == 202, job.text
            assert (await a.get("/v1/credits", headers=user)).json() == {
                "balance": 6, "reserved": 4}
            disabled = await b.post(f"/v1/admin/users/{made['id']}/disable", headers=ADMIN)
            assert disabled.status_code == 200, disabled.text
            assert (len(disabled.json()["canceled_jobs"]), disabled.json()["refunded"]) == (2, 4)
            assert disabled.json()["user"]["credits"] == {"balance": 10, "reserved": 0}
            waited = await asyncio.gather(_refused_within(a, user, 403),
                                          _refused_within(b, user, 403))
            assert max(waited) < WITHIN_S
            enabled = await a.post(f"/v1/admin/users/{made['id']}/enable", headers=ADMIN)
            assert enabled.status_code == 200
            for client in (a, b):
                assert (await client.get("/v1/credits", headers=user)).status_code == 200
    assert b'"event": "auth_invalidations_subscribed"' in log_b.read_bytes()
    conn = await asyncpg.connect(str(settings.database_url))
    try:
        sums = await conn.fetchrow(
            "SELECT a.balance, a.reserved, sum(l.amount) AS amount, "
            "sum(l.reserved_delta) AS held FROM credit_accounts a "
            "JOIN credit_ledger l USING (user_id) WHERE a.user_id = $1 "
            "GROUP BY a.balance, a.reserved", uuid.UUID(made["id"]))
        statuses = await conn.fetch("SELECT status FROM generation_jobs")
    finally:
        await conn.close()
    assert sums is not None
    assert (sums["balance"], sums["reserved"]) == (sums["amount"], sums["held"]) == (10, 0)
    assert [r["status"] for r in statuses] == ["canceled", "canceled"]
