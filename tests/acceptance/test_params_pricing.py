"""Size-priced jobs through real ``genq api`` and ``genq worker`` processes: a large canvas
reserves and captures its tier price, a small one its base price, and what the worker renders
is what was priced."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from shared.embedded import free_port
from shared.settings import Settings
from tests.acceptance.recovery_support import Processes, process_env

ADMIN = {"Authorization": "Bearer accept-admin-token-0123456789abcdef"}
TERMINAL = ("succeeded", "failed", "canceled")


async def _ready(client: httpx.AsyncClient, procs: Processes) -> None:
    deadline = time.monotonic() + 60
    while True:
        procs.assert_alive()
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"genq api never became ready\n{procs.tails()}"
        await asyncio.sleep(0.1)


async def _finished(client: httpx.AsyncClient, headers: dict[str, str], job_id: str,
                    procs: Processes) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if job["status"] in TERMINAL:
            return job
        procs.assert_alive()
        assert time.monotonic() < deadline, f"job not finished: {job}\n{procs.tails()}"
        await asyncio.sleep(0.1)


async def test_a_large_canvas_reserves_and_captures_its_tier_price(
    settings: Settings, procs: Processes, tmp_path: Path
) -> None:
    port = free_port()
    env = process_env(
        database_url=str(settings.database_url), redis_url=str(settings.redis_url),
        data_dir=str(tmp_path / "data"), queue_name=settings.queue_name,
        admin_token="accept-admin-token-0123456789abcdef", log_format="json", poll_delay_s="0.02",
    )
    procs.start(["api", "--host", "127.0.0.1", "--port", str(port)], env, "api")
    procs.start(["worker"], env, "worker")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await _ready(client, procs)
        made = await client.post("/v1/admin/users", json={"email": "tiers@example.com"},
                                 headers=ADMIN)
        assert made.status_code == 201, made.text
        user = {"Authorization": f"Bearer {made.json()['api_key']}"}
        granted = await client.post(f"/v1/admin/users/{made.json()['id']}/credits",
                                    json={"amount": 100}, headers=ADMIN)
        assert granted.status_code == 200, granted.text

        big = await client.post("/v1/jobs", headers=user, json={
            "model": "local/sketch", "prompt": "a harbour", "num_outputs": 2, "seed": 1,
            "params": {"width": 2048, "height": 2048}})
        small = await client.post("/v1/jobs", headers=user, json={
            "model": "local/sketch", "prompt": "a harbour", "num_outputs": 2, "seed": 1,
            "params": {"width": 256, "height": 256}})
        refused = await client.post("/v1/jobs", headers=user, json={
            "model": "local/sketch", "prompt": "a harbour", "num_outputs": 2, "seed": 1,
            "params": {"width": 4096, "height": 4096}})
        assert (big.status_code, small.status_code, refused.status_code) == (202, 202, 422)
        assert big.json()["cost"]["reserved"] == 16 and small.json()["cost"]["reserved"] == 2

        big_job = await _finished(client, user, big.json()["id"], procs)
        small_job = await _finished(client, user, small.json()["id"], procs)
        assert (big_job["status"], small_job["status"]) == ("succeeded", "succeeded")
        assert big_job["cost"] == {"price_per_output": 8, "reserved": 16, "captured": 16,
                                   "refunded": 0}
        assert small_job["cost"] == {"price_per_output": 1, "reserved": 2, "captured": 2,
                                     "refunded": 0}
        credits = (await client.get("/v1/credits", headers=user)).json()
        assert credits == {"balance": 82, "reserved": 0}
        ledger = (await client.get("/v1/credits/ledger", headers=user)).json()["data"]
        assert sorted((e["kind"], e["amount"], e["reserved_delta"], e["job_id"])
                      for e in ledger) == sorted([
            ("grant", 100, 0, None),
            ("reserve", -16, 16, big_job["id"]), ("capture", 0, -16, big_job["id"]),
            ("reserve", -2, 2, small_job["id"]), ("capture", 0, -2, small_job["id"]),
        ])
        # What the worker rendered is the size that was priced.
        for job, side in ((big_job, 2048), (small_job, 256)):
            assert [(o["width"], o["height"]) for o in job["outputs"]] == [(side, side)] * 2
            content = await client.get(f"/v1/assets/{job['outputs'][0]['id']}/content",
                                       headers=user)
            assert content.status_code == 200
            with Image.open(io.BytesIO(content.content)) as image:
                assert (image.format, image.size) == ("PNG", (side, side))
