"""A model's ``max_per_minute`` holds across worker processes: the provider never sees more
creates in any 60 s than the catalog allows, so it never answers 429 because of genq."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared.db import Pool
from shared.queue import enqueue_generations
from shared.settings import Settings
from tests.acceptance.test_worker_process import WorkerProcess
from tests.factories import add_models, create_job, funded_user
from tests.fakes.replicate_server import FakeReplicate, Script
from tests.media_samples import png

PER_MINUTE = 60
# Enough to need two minutes' worth of creates: 60 at once, then the rest a minute later.
JOBS = 70

MODELS = f"""
[[models]]
key = "replicate/limited"
provider = "replicate"
ref = "acme/limited"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 20
max_per_minute = {PER_MINUTE}
"""


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    server = FakeReplicate().start()
    server.add_file("a.png", png(8, 8))
    # The provider enforces the same rate itself: a create past it would be a 429.
    server.script("acme/limited", Script(polls=0, outputs=["a.png"],
                                         max_creates_per_minute=PER_MINUTE))
    yield server
    server.stop()


def _env(settings: Settings, fake: FakeReplicate, models_file: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "REPLICATE_"))}
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_MODELS_FILE": models_file,
        "GENQ_REPLICATE_BASE_URL": fake.base_url,
        "GENQ_REPLICATE_API_TOKEN": "test-token",
        "GENQ_OUTPUT_ALLOWED_HOSTS": "127.0.0.1",
        "GENQ_PROVIDER_POLL_INTERVAL_S": "0.05",
        "GENQ_VARIANTS_ENABLED": "false",
        "GENQ_LOG_FORMAT": "json",
        "GENQ_DB_POOL_MIN_SIZE": "1",
    })
    return env


def _most_in_any_minute(times: list[float]) -> int:
    """The most creates that fall in one 60 s window, over every window starting at a create."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + 60) for i, t in enumerate(times)), default=0)


@pytest.mark.slow
async def test_max_per_minute_holds_across_two_workers(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, fake: FakeReplicate, tmp_path: Any
) -> None:
    await add_models(pool, MODELS)
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    env = _env(settings, fake, str(models_file))
    workers = [WorkerProcess(env, tmp_path, f"w{i}") for i in range(2)]
    try:
        user = await funded_user(pool, JOBS)
        ids: list[uuid.UUID] = [
            (await create_job(pool, model="replicate/limited", num_outputs=1,
                              user_id=user)).id
            for _ in range(JOBS)
        ]
        await enqueue_generations(arq_redis, settings.queue_name, ids)
        deadline = time.monotonic() + 240
        while True:
            done = await pool.fetchval(
                "SELECT count(*) FROM generation_jobs WHERE id = ANY($1::uuid[]) "
                "AND status IN ('succeeded', 'failed', 'canceled')", ids)
            if done == JOBS:
                break
            if time.monotonic() > deadline:
                logs = "\n".join(w.output()[-3000:] for w in workers)
                raise AssertionError(f"{done} of {JOBS} jobs finished\n{logs}")
            await asyncio.sleep(0.5)
    finally:
        for w in workers:
            w.stop()
    statuses = await pool.fetch(
        "SELECT status, error_code, count(*) AS n FROM generation_jobs "
        "WHERE id = ANY($1::uuid[]) GROUP BY 1, 2", ids)
    # Every job succeeded although most waited far longer than the model's 20 s timeout for
    # their turn: the wait is not part of the timeout.
    assert [(r["status"], r["error_code"], r["n"]) for r in statuses] == [
        ("succeeded", None, JOBS)]
    times = fake.create_times["acme/limited"]
    assert len(times) == JOBS
    assert fake.rate_limited["acme/limited"] == 0
    assert _most_in_any_minute(times) <= PER_MINUTE
    # And the run took the two windows the limit implies: the last creates came after a full
    # window.
    assert max(times) - min(times) >= 60
    # Both workers called the provider.
    assert all("prediction_created" in w.output() for w in workers)


CONCURRENCY = 2
LOCAL_LIMITED = """
[[models]]
key = "local/limited"
provider = "local"
ref = "sketch"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 20
params = { width = 8, height = 8, format = "png" }
max_concurrency = 2
"""


@pytest.mark.slow
async def test_max_concurrency_places_come_back_when_each_call_ends(
    pool: Pool, arq_redis: ArqRedis, settings: Settings, tmp_path: Any
) -> None:
    """12 jobs of 0.3 s on a model allowing 2 calls at once, through a worker with 10 slots:
    each job gives its place back when its provider call ends, so the jobs go two by two in a
    few seconds, not one pair per lease (60 s) as places left to expire would make them."""
    await add_models(pool, LOCAL_LIMITED)
    models_file = tmp_path / "models.toml"
    models_file.write_text(LOCAL_LIMITED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url, "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir), "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_MODELS_FILE": str(models_file), "GENQ_LOCAL_LATENCY_S": "0.3",
        "GENQ_MAX_JOBS": "10", "GENQ_LEASE_S": "60", "GENQ_VARIANTS_ENABLED": "false",
        "GENQ_LOG_FORMAT": "json", "GENQ_DB_POOL_MIN_SIZE": "1",
    })
    worker = WorkerProcess(env, tmp_path, "w")
    user = await funded_user(pool, 12)
    ids = [(await create_job(pool, model="local/limited", num_outputs=1, params={},
                             user_id=user)).id for _ in range(12)]
    try:
        await enqueue_generations(arq_redis, settings.queue_name, ids)
        # Well inside one lease: a place not given back would hold the third job until then.
        deadline = time.monotonic() + 40
        while await pool.fetchval(
                "SELECT count(*) FROM generation_jobs WHERE id = ANY($1::uuid[]) "
                "AND status = 'succeeded'", ids) < len(ids):
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
    # The model's limit did bind (jobs waited for a place), and no place is held any more.
    assert "model_limit_waited" in worker.output()
    key = f"{settings.queue_name}:limits:model:local/limited:running"
    assert await arq_redis.zcard(key) == 0
