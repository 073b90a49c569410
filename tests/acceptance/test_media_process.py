"""Media through a real ``genq worker`` process: a local/clip video with its poster, and a
PNG decompression bomb refused without the worker's memory growing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from PIL import Image

from shared.db import Pool
from shared.queue import enqueue_generation
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.factories import add_models, assert_invariants, assets_of, create_job, job_row
from tests.fakes.replicate_server import FakeReplicate, Script
from tests.media_samples import png, png_bomb

MODELS = """
[[models]]
key = "replicate/m"
provider = "replicate"
ref = "acme/m"
media_type = "image"
price_per_output = 3
max_outputs = 4
timeout_s = 30
"""


class Worker:
    """``python -m genq worker`` with its output in a file."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.log = cwd / "worker.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker"], env=env, cwd=cwd,
                stdout=out, stderr=subprocess.STDOUT,
            )

    def peak_rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    server = FakeReplicate().start()
    yield server
    server.stop()


@pytest.fixture
def worker(settings: Settings, fake: FakeReplicate, tmp_path: Path) -> Iterator[Worker]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "REPLICATE_"))}
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_MODELS_FILE": str(models_file),
        "GENQ_REPLICATE_BASE_URL": fake.base_url,
        "GENQ_REPLICATE_API_TOKEN": "test-token",
        "GENQ_OUTPUT_ALLOWED_HOSTS": "127.0.0.1",
        "GENQ_POLL_DELAY_S": "0.02",
        "GENQ_PROVIDER_POLL_INTERVAL_S": "0.05",
        "GENQ_PROVIDER_POLL_MAX_INTERVAL_S": "0.1",
        "GENQ_LOG_FORMAT": "json",
        "GENQ_DB_POOL_MIN_SIZE": "1",
    })
    w = Worker(env, tmp_path)
    yield w
    w.stop()


async def _finished(pool: Pool, job_id: uuid.UUID, worker: Worker,
                    timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = await job_row(pool, job_id)
        if row["finished_at"] is not None:
            return row
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"job not finished: {row}\n{worker.log.read_text()[-4000:]}")
        await asyncio.sleep(0.05)


async def test_local_clip_is_an_mp4_with_duration_size_fps_and_a_poster(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, worker: Worker
) -> None:
    job = await create_job(pool, model="local/clip", num_outputs=1, credits=10, seed=9)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    row = await _finished(pool, job.id, worker)
    assert (row["status"], row["outputs_made"]) == ("succeeded", 1)
    [asset] = await assets_of(pool, job.id)
    assert (asset["mime_type"], asset["asset_type"], asset["width"], asset["height"]) == (
        "video/mp4", "video", 256, 256)
    assert asset["duration_seconds"] == pytest.approx(2.0)
    assert asset["fps"] == pytest.approx(12.0)
    storage = LocalStorage(settings.storage_root)
    with storage.path(asset["storage_key"]).open("rb") as f:
        head = f.read(12)
    assert head[4:12] == b"ftypisom"
    [poster] = await pool.fetch("SELECT * FROM asset_variants WHERE asset_id = $1", asset["id"])
    assert (poster["kind"], poster["mime_type"], poster["width"], poster["height"]) == (
        "poster", "image/webp", 256, 256)
    assert poster["storage_key"] == f"{job.user_id}/{job.id}/0.poster.webp"
    assert storage.path(poster["storage_key"]).stat().st_size == poster["file_size_bytes"]
    with Image.open(storage.path(poster["storage_key"])) as image:
        assert (image.format, image.size) == ("WEBP", (256, 256))
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (8, 0)  # one clip at 2 credits


async def test_a_png_bomb_is_refused_without_the_worker_growing(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fake: FakeReplicate, worker: Worker
) -> None:
    await add_models(pool, MODELS)
    bomb = png_bomb(20_000, 20_000)  # 400 million pixels in a few hundred KB
    assert len(bomb) < 1_000_000
    fake.add_file("small.png", png(300, 200), "image/png")
    fake.add_file("bomb.png", bomb, "image/png")
    # Warm up: a small image with its variants, so the baseline has everything loaded.
    fake.script("acme/m", Script(outputs=["small.png"]))
    warm = await create_job(pool, model="replicate/m", num_outputs=1, credits=10)
    assert await enqueue_generation(arq_redis, settings.queue_name, warm.id)
    assert (await _finished(pool, warm.id, worker))["status"] == "succeeded"
    before = worker.peak_rss_mb()

    fake.script("acme/m", Script(outputs=["bomb.png"]))
    job = await create_job(pool, model="replicate/m", num_outputs=1, credits=10)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    row = await _finished(pool, job.id, worker)
    after = worker.peak_rss_mb()
    print(f"\nworker peak RSS {before:.1f} MB before the bomb, {after:.1f} MB after")
    assert (row["status"], row["error_code"]) == ("failed", "output_too_large")
    assert await assets_of(pool, job.id) == []
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (10, 0)
    assert not LocalStorage(settings.storage_root).path(f"{job.user_id}/{job.id}").exists()
    assert after - before < 200
