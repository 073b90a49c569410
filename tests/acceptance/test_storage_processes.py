"""Storage across real processes: two ``genq api`` and one ``genq worker``, each with its own
data folder, sharing only PostgreSQL, Redis and an S3 server (moto on 127.0.0.1); and a 1 GiB
output served by a real ``genq api`` with its memory measured from /proc."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shared.db import Pool
from shared.embedded import free_port
from shared.settings import Settings
from shared.storage import LocalStorage, asset_key
from tests.acceptance.recovery_support import Processes
from tests.acceptance.stack_support import clean_env
from tests.integration.api_support import new_user
from tests.s3_support import S3Server

ADMIN = {"Authorization": "Bearer storage-admin-token-0123456789abcdef"}
READY_TIMEOUT_S = 60.0
# A memory bound, not a timing one: streaming 1 GiB must not hold it in memory.
RSS_LIMIT_MB = 200.0


def _env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        GENQ_DATABASE_URL=str(settings.database_url),
        GENQ_REDIS_URL=str(settings.redis_url),
        GENQ_QUEUE_NAME=settings.queue_name,
        GENQ_DATA_DIR=str(data_dir),
        GENQ_ADMIN_TOKEN="storage-admin-token-0123456789abcdef",
        GENQ_LOG_FORMAT="json",
        **extra,
    )


async def _ready(base: str, procs: Processes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            procs.assert_alive()
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{base} never came up\n{procs.tails()}"
            await asyncio.sleep(0.1)


async def _start_api(procs: Processes, env: dict[str, str], name: str) -> str:
    port = free_port()
    procs.start(["api", "--host", "127.0.0.1", "--port", str(port)], env, name)
    base = f"http://127.0.0.1:{port}"
    await _ready(base, procs)
    return base


async def _wait_succeeded(client: httpx.AsyncClient, job_id: str, auth: dict[str, str],
                          procs: Processes) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}", headers=auth)).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert job["status"] == "succeeded", f"{job}\n{procs.tails()}"
            return dict(job)
        procs.assert_alive()
        assert time.monotonic() < deadline, f"job not finished\n{procs.tails()}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_two_apis_and_a_worker_share_only_s3(
    settings: Settings, pool: Pool, procs: Processes, s3_server: S3Server, tmp_path: Path,
) -> None:
    bucket = s3_server.new_bucket()
    s3_env = {**s3_server.env(), "GENQ_STORAGE_URL": f"s3://{bucket}/genq"}
    folders = [tmp_path / name for name in ("api-a", "api-b", "worker")]
    api_a = await _start_api(procs, _env(settings, folders[0], **s3_env), "api-a")
    api_b = await _start_api(procs, _env(settings, folders[1], **s3_env), "api-b")
    procs.start(["worker"], _env(settings, folders[2], **s3_env), "worker")

    async with httpx.AsyncClient(base_url=api_a, timeout=10) as a, \
            httpx.AsyncClient(base_url=api_b, timeout=10) as b, \
            httpx.AsyncClient(timeout=10) as browser:
        auth = (await new_user(a, 10, admin=ADMIN)).headers
        r = await a.post("/v1/jobs", headers=auth, json={
            "model": "local/sketch", "prompt": "two machines", "num_outputs": 2, "seed": 3})
        assert r.status_code == 202, r.text
        job = await _wait_succeeded(b, r.json()["id"], auth, procs)
        outputs = job["outputs"]
        assert isinstance(outputs, list) and len(outputs) == 2

        # Each output and its thumbnail, all in the bucket.
        stored = s3_server.keys(bucket)
        assert len(stored) == 4 and all(k.startswith("genq/") for k in stored)
        assert sum(k.endswith(".thumb.webp") for k in stored) == 2
        for output in outputs:
            asset_id = output["id"]
            bodies = []
            for api in (a, b):
                listed = (await api.get(f"/v1/assets?job_id={job['id']}", headers=auth)).json()
                assert sorted(x["id"] for x in listed["data"]) == sorted(o["id"] for o in outputs)
                content = await api.get(f"/v1/assets/{asset_id}/content", headers=auth)
                assert content.status_code == 200
                assert content.headers["content-type"] == "image/png"
                bodies.append(content.content)
                # The signed URL works with no header at all: the store serves it.
                url = (await api.get(f"/v1/assets/{asset_id}", headers=auth)).json()["content_url"]
                assert url.startswith(s3_server.endpoint_url)
                signed = await browser.get(url)
                assert signed.status_code == 200
                bodies.append(signed.content)
                thumb = (await api.get(f"/v1/assets/{asset_id}", headers=auth)).json()[
                    "variants"]["thumb"]["url"]
                assert thumb.startswith(s3_server.endpoint_url)
                shown = await browser.get(thumb)
                assert shown.status_code == 200 and shown.content.startswith(b"RIFF")
            assert bodies[0].startswith(b"\x89PNG") and len(set(bodies)) == 1
            assert len(bodies[0]) == output["size_bytes"]

        # Nothing of it lives in any process's data folder.
        for folder in folders:
            assert not (folder / "storage").exists(), folder

        # Expiry cleanup, run by another process, removes the objects and the rows.
        await pool.execute("UPDATE workspace_assets SET expires_at = now() - interval '1 s' "
                           "WHERE job_id = $1", uuid.UUID(str(job["id"])))
        cleanup = procs.start(["cleanup", "--only", "expire-assets"],
                              _env(settings, folders[2], **s3_env), "cleanup")
        assert cleanup.proc.wait(60) == 0, cleanup.output()
        assert "rows_deleted=2" in cleanup.output(), cleanup.output()
        assert s3_server.keys(bucket) == []
        gone = await a.get(f"/v1/assets/{outputs[0]['id']}/content", headers=auth)
        assert gone.status_code == 404
        assert (await browser.get(url)).status_code == 404


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _one_gib_asset(pool: Pool, client: httpx.AsyncClient, storage: LocalStorage
                         ) -> tuple[dict[str, str], str, int]:
    user = await new_user(client, 10, admin=ADMIN)
    auth, user_id = user.headers, user.id
    r = await client.post("/v1/jobs", json={"model": "local/sketch", "prompt": "long"},
                          headers=auth)
    assert r.status_code == 202
    job_id = uuid.UUID(r.json()["id"])
    key = asset_key(user_id, job_id, 0, "mp4")
    size = 1024**3
    with storage.writer(key) as handle:  # a sparse file: 1 GiB without writing 1 GiB
        handle.write(b"\x00\x00\x00\x18ftypmp42")
        handle.truncate(size)
    asset_id = await pool.fetchval(
        "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, storage_key, "
        "file_size_bytes, mime_type) VALUES ($1, $2, 0, 'video', $3, $4, 'video/mp4') "
        "RETURNING id", user_id, job_id, key, size)
    return auth, str(asset_id), size


async def _stream(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    total = 0
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw(1024 * 1024):
            total += len(chunk)
    return total


@pytest.mark.slow
async def test_one_gib_output_streams_in_flat_memory(
    settings: Settings, pool: Pool, procs: Processes, tmp_path: Path,
) -> None:
    data_dir = tmp_path / "api"
    base = await _start_api(procs, _env(settings, data_dir), "api")
    pid = procs.started[0].proc.pid
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        storage = LocalStorage(data_dir / "storage")
        auth, asset_id, size = await _one_gib_asset(pool, client, storage)
        url = (await client.get(f"/v1/assets/{asset_id}", headers=auth)).json()["content_url"]
        before = _rss_mb(pid)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(_rss_mb(pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            by_header = await _stream(client, f"/v1/assets/{asset_id}/content", auth)
            by_signed_url = await _stream(client, url, {})
        finally:
            done.set()
            sampler.join()
    assert (by_header, by_signed_url) == (size, size)
    peak = max(samples)
    print(f"\napi RSS while streaming 2 x 1 GiB: before {before:.1f} MB, peak {peak:.1f} MB, "
          f"{len(samples)} samples")
    assert len(samples) > 10
    assert peak < RSS_LIMIT_MB, f"RSS reached {peak:.1f} MB (before: {before:.1f} MB)"
