"""The per-user running cap (GENQ_USER_MAX_RUNNING) with a real worker process: a user with
thousands of jobs queued holds at most the cap of the worker's slots, and another user's first
job starts at once instead of behind all of them."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared.db import Pool
from shared.dispatch import waiting_mark
from shared.settings import Settings
from tests.acceptance.test_worker_process import WorkerProcess
from tests.integration.api_support import Api, User, running_app

CAP = 5
SLOTS = 20
JOB_S = 0.2
HOT_JOBS = 2000
OTHER_JOBS = 10
JOB = {"model": "local/sketch", "prompt": "p", "num_outputs": 1,
       "params": {"width": 8, "height": 8}}


@pytest.fixture(name="capped")
async def capped_api(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    configured = settings.model_copy(update={"user_max_running": CAP})
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


def _worker(settings: Settings, tmp_path: Path, *, cap: int = CAP, slots: int = SLOTS,
            job_s: float = JOB_S, plans_file: Path | None = None) -> WorkerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    assert settings.database_url is not None and settings.redis_url is not None
    env.update({
        "GENQ_DATABASE_URL": settings.database_url,
        "GENQ_REDIS_URL": settings.redis_url,
        "GENQ_DATA_DIR": str(settings.data_dir),
        "GENQ_QUEUE_NAME": settings.queue_name,
        "GENQ_USER_MAX_RUNNING": str(cap),
        "GENQ_MAX_JOBS": str(slots),
        "GENQ_LOCAL_LATENCY_S": str(job_s),
        "GENQ_VARIANTS_ENABLED": "false",
        "GENQ_LOG_FORMAT": "json",
        "GENQ_LOG_LEVEL": "warning",
        "GENQ_DB_POOL_MIN_SIZE": "1",
    })
    if plans_file is not None:
        env["GENQ_PLANS_FILE"] = str(plans_file)
    return WorkerProcess(env, tmp_path, "worker")


async def _submit(api: Api, user: User, n: int) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    for start in range(0, n, 50):
        answers = await asyncio.gather(*(
            api.client.post("/v1/jobs", json=JOB, headers=user.headers)
            for _ in range(min(50, n - start))))
        for r in answers:
            assert r.status_code == 202, r.text
            ids.append(uuid.UUID(r.json()["id"]))
    return ids


async def _rows(pool: Pool, user: User) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, status, created_at, started_at, finished_at FROM generation_jobs "
        "WHERE user_id = $1 ORDER BY created_at, id", user.id)
    return [dict(r.items()) for r in rows]


def _most_at_once(rows: list[dict[str, Any]]) -> int:
    """The most of these jobs running at one moment (from their started and finished times)."""
    events = []
    for r in rows:
        if r["started_at"] is not None:
            events.append((r["started_at"], 1))
            if r["finished_at"] is not None:
                events.append((r["finished_at"], -1))
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
async def test_a_hot_user_holds_at_most_the_cap_and_others_start_at_once(
    capped: Api, pool: Pool, arq_redis: ArqRedis, settings: Settings, tmp_path: Path
) -> None:
    api = capped
    worker = _worker(settings, tmp_path)
    try:
        a = await api.user(credits=HOT_JOBS)
        b, c = await api.user(credits=OTHER_JOBS), await api.user(credits=OTHER_JOBS)
        await _submit(api, a, HOT_JOBS)
        # A's jobs run meanwhile; wait until some have finished, so B and C arrive while the
        # worker is busy with A.
        deadline = time.monotonic() + 120
        while sum(r["status"] == "succeeded" for r in await _rows(pool, a)) < 3 * CAP:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.2)
        others = await asyncio.gather(_submit(api, b, OTHER_JOBS), _submit(api, c, OTHER_JOBS))
        assert all(len(ids) == OTHER_JOBS for ids in others)
        while not all(r["status"] == "succeeded"
                      for r in await _rows(pool, b) + await _rows(pool, c)):
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
    hot = await _rows(pool, a)
    # A never held more than the cap, though 2,000 were queued and the worker had 20 slots.
    assert _most_at_once(hot) <= CAP
    # Most of A's jobs are still waiting: B's and C's did not queue behind them.
    assert sum(r["status"] == "queued" for r in hot) > HOT_JOBS // 2
    for user in (b, c):
        rows = await _rows(pool, user)
        first = rows[0]
        # While B's (or C's) first job waited to start, A started at most a couple of jobs
        # per place it holds: it went ahead of A's waiting thousands.
        a_started = sum(1 for r in hot if r["started_at"] is not None
                        and first["created_at"] <= r["started_at"] < first["started_at"])
        assert a_started <= 2 * CAP, a_started
        # And the user's own jobs ran CAP at a time too.
        assert _most_at_once(rows) <= CAP
        wait_ms = (first["started_at"] - first["created_at"]).total_seconds() * 1000
        print(f"\nfirst job of a new user started {wait_ms:.0f} ms after it was accepted "
              f"(one job runs {JOB_S * 1000:.0f} ms)")


@pytest.mark.slow
async def test_submits_racing_finishes_never_leave_a_job_waiting(
    settings: Settings, pool: Pool, arq_redis: ArqRedis, tmp_path: Path
) -> None:
    """A cap of 1 and short jobs: every submission's dispatch races the finish of the job
    that holds the place. With no scheduler to sweep up after them, each waiting job must be
    started by a finish or by the intake's second look, never left behind; the user's waiting
    mark is gone once nothing waits."""
    configured = settings.model_copy(update={"user_max_running": 1})
    worker = _worker(settings, tmp_path, cap=1, slots=SLOTS, job_s=0.01)
    try:
        async with running_app(configured) as (app, client):
            api = Api(app, client, configured, pool)
            user = await api.user(credits=200)
            ids: list[uuid.UUID] = []
            for burst in (1, 3, 1, 2, 5, 1, 1, 4, 2, 1, 8, 1, 3, 1, 1, 2, 6, 1, 2, 5) * 2:
                answers = await asyncio.gather(*(
                    api.client.post("/v1/jobs", json=JOB, headers=user.headers)
                    for _ in range(burst)))
                ids += [uuid.UUID(r.json()["id"]) for r in answers if r.status_code == 202]
                await asyncio.sleep(0.013 * burst)
            assert len(ids) == 2 * 51
            deadline = time.monotonic() + 120
            while (rows := await _rows(pool, user)) and not all(
                    r["status"] == "succeeded" for r in rows):
                assert time.monotonic() < deadline, (
                    [r["status"] for r in rows], worker.output()[-3000:])
                await asyncio.sleep(0.1)
    finally:
        worker.stop()
    assert _most_at_once(rows) <= 1
    assert await arq_redis.exists(waiting_mark(settings.queue_name, user.id)) == 0
