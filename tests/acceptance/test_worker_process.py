"""Real ``genq worker`` processes: killed with SIGKILL, stopped with SIGTERM, restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared.db import Pool
from shared.queue import enqueue_generation, wake_channel
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.factories import (
    add_models,
    assert_invariants,
    assets_of,
    create_job,
    job_row,
    ledger_kinds,
)
from tests.fakes.fal_server import FakeFal, FalScript
from tests.fakes.replicate_server import FakeReplicate, Script
from tests.media_samples import png

MODELS = """
[[models]]
key = "replicate/slow"
provider = "replicate"
ref = "acme/slow"
media_type = "image"
price_per_output = 5
max_outputs = 4
timeout_s = 30
"""


FAL_MODELS = """
[[models]]
key = "fal/slow"
provider = "fal"
ref = "fal-ai/slow/dev"
media_type = "image"
price_per_output = 5
max_outputs = 4
timeout_s = 30
"""


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    server = FakeReplicate().start()
    server.add_file("a.png", png(40, 30))
    yield server
    server.stop()


class WorkerProcess:
    """``python -m genq worker`` with its output in a file."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str) -> None:
        self.log = cwd / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker"], env=env, cwd=cwd,
                stdout=out, stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _spawner(settings: Settings, tmp_path: Path, models: str, provider_env: dict[str, str]
             ) -> tuple[Any, list[WorkerProcess]]:
    models_file = tmp_path / "models.toml"
    models_file.write_text(models)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "REPLICATE_"))
    }
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_MODELS_FILE": str(models_file),
        "GENQ_OUTPUT_ALLOWED_HOSTS": "127.0.0.1",
        "GENQ_LEASE_S": "1.5",
        "GENQ_HEARTBEAT_S": "0.3",
        "GENQ_LEASE_RECOVERY_INTERVAL_S": "0.5",
        "GENQ_POLL_DELAY_S": "0.02",
        "GENQ_PROVIDER_POLL_INTERVAL_S": "0.05",
        "GENQ_PROVIDER_POLL_MAX_INTERVAL_S": "0.1",
        "GENQ_SHUTDOWN_GRACE_S": "1",
        "GENQ_LOG_FORMAT": "json",
        "GENQ_DB_POOL_MIN_SIZE": "1",
        **provider_env,
    })
    started: list[WorkerProcess] = []

    def start(name: str, **extra: str) -> WorkerProcess:
        w = WorkerProcess({**env, **extra}, tmp_path, name)
        started.append(w)
        return w

    return start, started


@pytest.fixture
def spawn(settings: Settings, fake: FakeReplicate, tmp_path: Path,
          ) -> Iterator[Any]:
    start, started = _spawner(settings, tmp_path, MODELS, {
        "GENQ_REPLICATE_BASE_URL": fake.base_url, "GENQ_REPLICATE_API_TOKEN": "test-token"})
    yield start
    for w in started:
        w.stop()


@pytest.fixture
def fal() -> Iterator[FakeFal]:
    server = FakeFal().start()
    server.add_file("a.png", png(40, 30), "image/png")
    yield server
    server.stop()


@pytest.fixture
def spawn_fal(settings: Settings, fal: FakeFal, tmp_path: Path) -> Iterator[Any]:
    start, started = _spawner(settings, tmp_path, FAL_MODELS, {
        "GENQ_FAL_QUEUE_URL": fal.queue_url, "GENQ_FAL_KEY": fal.key})
    yield start
    for w in started:
        w.stop()


async def _wait_for(pool: Pool, job_id: uuid.UUID, what: str, check: Any,
                    workers: list[WorkerProcess], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = await job_row(pool, job_id)
        if check(row):
            return row
        if time.monotonic() > deadline:
            logs = "\n".join(w.output()[-4000:] for w in workers)
            raise AssertionError(f"timed out waiting for {what}; job={row}\n{logs}")
        await asyncio.sleep(0.05)


async def test_idle_worker_picks_up_a_job_quickly(pool: Pool, arq_redis: ArqRedis,
                                                  settings: Settings, spawn: Any) -> None:
    worker = spawn("w")
    job = await create_job(pool, model="local/sketch", num_outputs=1, credits=1)
    # Let the worker start and go idle first, so this measures pickup, not start-up.
    await _wait_for_health(arq_redis, settings.queue_name, worker)
    enqueued = time.monotonic()
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    row = await _wait_for(pool, job.id, "success", lambda r: r["status"] == "succeeded",
                          [worker], timeout=10)
    elapsed = time.monotonic() - enqueued
    pickup = (row["started_at"] - row["enqueued_at"]).total_seconds()
    print(f"\nlocal job end-to-end {elapsed * 1000:.0f} ms")
    assert row["outputs_made"] == 1 and pickup >= 0
    assert elapsed < 2.0
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0


async def test_an_idle_worker_is_woken_by_the_enqueue_not_its_poll_delay(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, spawn: Any
) -> None:
    # The longest poll delay there is: its next poll comes about 10 s after its first, so a
    # job that finishes within 5 s of its enqueue was started by the wake.
    worker = spawn("w", GENQ_POLL_DELAY_S="10")
    job = await create_job(pool, model="local/sketch", num_outputs=1, credits=1)
    await _wait_for_health(arq_redis, settings.queue_name, worker)
    # Its first poll is done (it wrote its health check) and it is subscribed: it now waits.
    deadline = time.monotonic() + 30
    while (await arq_redis.pubsub_numsub(wake_channel(settings.queue_name)))[0][1] < 1:
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    row = await _wait_for(pool, job.id, "success", lambda r: r["status"] == "succeeded",
                          [worker], timeout=5)
    assert row["outputs_made"] == 1
    assert (await assert_invariants(pool, job.user_id)).balance == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "worker_wake_unavailable" not in worker.output()


async def _wait_for_health(redis: ArqRedis, queue_name: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 30
    while not await redis.exists(queue_name + ":health-check"):
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("worker did not start:\n" + worker.output())
        await asyncio.sleep(0.05)


async def test_sigkill_mid_job_then_restart_resumes_the_prediction(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fake: FakeReplicate, spawn: Any
) -> None:
    await add_models(pool, MODELS)
    fake.script("acme/slow", Script(polls=1, min_runtime_s=4.0, outputs=["a.png"]))
    job = await create_job(pool, model="replicate/slow", num_outputs=2, credits=10)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)

    first = spawn("first")
    row = await _wait_for(pool, job.id, "a prediction id",
                          lambda r: r["provider_prediction_id"] is not None, [first])
    first.signal(signal.SIGKILL)
    first.wait(10)
    killed_at = time.monotonic()
    assert (await job_row(pool, job.id))["status"] == "running"

    second = spawn("second")
    row = await _wait_for(pool, job.id, "the end", lambda r: r["finished_at"] is not None,
                          [first, second])
    print(f"\nrecovered {time.monotonic() - killed_at:.1f} s after SIGKILL")
    assert (row["status"], row["outputs_made"], row["attempt"]) == ("succeeded", 1, 2)
    assert fake.creates["acme/slow"] == 1
    assert len(await assets_of(pool, job.id)) == 1
    assert [k for k, _, _ in await ledger_kinds(pool, job.user_id)] == [
        "grant", "reserve", "capture", "refund"]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (5, 0)  # 10 - 1 output x 5
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0


async def test_many_replicate_jobs_share_one_bounded_poller(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fake: FakeReplicate, spawn: Any
) -> None:
    """200 jobs wait on their predictions at once in one worker: every one succeeds with its
    output stored and its credits captured, while the worker never has more GETs in flight
    than its poller's concurrency and stops polling a prediction once it has ended."""
    n, concurrency = 200, 4
    await add_models(pool, MODELS)
    # Every GET takes 20 ms to answer, so GETs made independently would overlap.
    fake.script("acme/slow", Script(polls=2, min_runtime_s=1.0, get_delay_s=0.02,
                                    outputs=["a.png"]))
    jobs = [await create_job(pool, model="replicate/slow", num_outputs=1, credits=10)
            for _ in range(n)]
    worker = spawn("w", GENQ_MAX_JOBS=str(n),
                   GENQ_PROVIDER_POLL_CONCURRENCY=str(concurrency),
                   GENQ_LEASE_S="30", GENQ_HEARTBEAT_S="5")
    for job in jobs:
        assert await enqueue_generation(arq_redis, settings.queue_name, job.id)
    for job in jobs:
        row = await _wait_for(pool, job.id, "the end", lambda r: r["finished_at"] is not None,
                              [worker], timeout=180)
        assert (row["status"], row["outputs_made"], row["attempt"]) == ("succeeded", 1, 1)
        assets = await assets_of(pool, job.id)
        assert len(assets) == 1
        assert LocalStorage(settings.storage_root).path(assets[0]["storage_key"]).read_bytes() \
            == png(40, 30)
        assert [k for k, _, _ in await ledger_kinds(pool, job.user_id)] == [
            "grant", "reserve", "capture"]
        account = await assert_invariants(pool, job.user_id)
        assert (account.balance, account.reserved) == (5, 0)  # 10 - 1 output x 5
    assert fake.creates["acme/slow"] == n
    # Each prediction answered "processing" twice before it could end: at least 3 GETs each.
    assert all(p.gets >= 3 for p in fake.predictions.values())
    assert fake.prediction_gets >= 3 * n
    assert 1 < fake.max_gets_in_flight <= concurrency
    assert fake.gets_after_end == 0
    assert fake.cancels == []
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0


async def test_sigkill_after_the_fal_submit_then_restart_resumes_the_same_request(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fal: FakeFal, spawn_fal: Any
) -> None:
    await add_models(pool, FAL_MODELS)
    fal.script("fal-ai/slow/dev", FalScript(queue_polls=2, min_runtime_s=4.0,
                                            outputs=["a.png"]))
    job = await create_job(pool, model="fal/slow", num_outputs=2, credits=10)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)

    first = spawn_fal("first")
    row = await _wait_for(pool, job.id, "a fal request id",
                          lambda r: r["provider_prediction_id"] is not None, [first])
    request_id = row["provider_prediction_id"]
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert (await job_row(pool, job.id))["status"] == "running"

    second = spawn_fal("second")
    row = await _wait_for(pool, job.id, "the end", lambda r: r["finished_at"] is not None,
                          [first, second])
    assert (row["status"], row["outputs_made"], row["attempt"]) == ("succeeded", 1, 2)
    # One fal request for the job: the second worker polled the one the first submitted.
    assert row["provider_prediction_id"] == request_id
    assert fal.submits["fal-ai/slow/dev"] == 1
    assert [c for c in fal.calls if c[0] == "POST"] == [("POST", "/fal-ai/slow/dev")]
    assert ("GET", f"/fal-ai/slow/requests/{request_id}") in fal.calls
    assert len(await assets_of(pool, job.id)) == 1
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (5, 0)  # 10 - 1 output x 5
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0


async def test_sigterm_hands_a_running_job_back(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fake: FakeReplicate, spawn: Any
) -> None:
    await add_models(pool, MODELS)
    fake.script("acme/slow", Script(polls=1, min_runtime_s=3.5, outputs=["a.png"]))
    job = await create_job(pool, model="replicate/slow", num_outputs=1, credits=5)
    assert await enqueue_generation(arq_redis, settings.queue_name, job.id)

    first = spawn("first")
    await _wait_for(pool, job.id, "a prediction id",
                    lambda r: r["provider_prediction_id"] is not None, [first])
    stopping = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0  # grace (1 s) ran out: the job was handed back, not lost
    print(f"\nSIGTERM to exit {time.monotonic() - stopping:.1f} s")
    row = await job_row(pool, job.id)
    assert (row["status"], row["lease_owner"]) == ("running", None)
    assert row["lease_expires_at"] is not None

    second = spawn("second")
    row = await _wait_for(pool, job.id, "the end", lambda r: r["finished_at"] is not None,
                          [first, second])
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert fake.creates["acme/slow"] == 1 and fake.cancels == []
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (0, 0)
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0
