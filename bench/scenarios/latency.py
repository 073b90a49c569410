"""Submit to ``succeeded`` on an idle system, one job at a time.

genq: ``POST /v1/jobs`` to a ``genq api`` process, a ``genq worker`` runs it; the time is from
just before the request to the job's ``finished_at``. Baseline: ``enqueue_job`` of a no-op on a
bare arq worker, to the result's ``finish_time``. Both workers poll Redis every
``GENQ_POLL_DELAY_S`` (0.05 s by default) when idle, and a random pause before each submit
spreads submits over that poll cycle; genq's worker is also woken by the intake's enqueue
(``worker/wake.py``), bare arq's waits for its next poll.

genq's row notes where the time goes, p50 of each phase, from the job's own timestamps: the
request until its submit statement starts (``created_at``), from there until a worker's claim
(``started_at``: the submit's commit, the enqueue and its wake of the worker, and arq's start
of the job), and the claim until the final write (``finished_at``); and the
whole ``POST`` as the client saw it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import httpx
from arq.jobs import Job

from bench import seed
from bench.env import BenchEnv
from bench.report import Row
from bench.stats import percentile
from shared.types import JobStatus

POLL_S = 0.002
WARMUP = 5


PHASES = ("post", "to_created", "created_to_claimed", "claimed_to_finished")


async def _genq(env: BenchEnv, n: int) -> tuple[list[float], dict[str, list[float]]]:
    pool = env.db()
    queue = env.queue("latency")
    _, base = await env.genq_api(queue)
    await env.genq_worker(queue)
    (user,) = await seed.users(pool, 1, 10**9)
    body = {"model": "local/sketch", "prompt": "latency", "num_outputs": 1,
            "params": seed.TINY_PARAMS}
    samples: list[float] = []
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 headers={"Authorization": f"Bearer {user.api_key}"}) as client:
        for i in range(WARMUP + n):
            await asyncio.sleep(random.uniform(0.01, 0.06))
            started = time.time()
            r = await client.post("/v1/jobs", json=body)
            answered = time.time()
            if r.status_code != 202:
                raise RuntimeError(f"latency: submit answered {r.status_code}: {r.text}")
            job_id = uuid.UUID(r.json()["id"])
            deadline = time.monotonic() + 30
            while True:
                row = await pool.fetchrow(
                    "SELECT status, extract(epoch FROM created_at)::float8 AS created,"
                    " extract(epoch FROM started_at)::float8 AS claimed,"
                    " extract(epoch FROM finished_at)::float8 AS finished"
                    " FROM generation_jobs WHERE id = $1", job_id)
                assert row is not None
                if row["finished"] is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"latency: job {job_id} did not finish")
                await asyncio.sleep(POLL_S)
            if row["status"] != JobStatus.SUCCEEDED:
                raise RuntimeError(f"latency: job {job_id} ended {row['status']}")
            if i >= WARMUP:
                samples.append(row["finished"] - started)
                for name, value in zip(PHASES, (
                        answered - started, row["created"] - started,
                        row["claimed"] - row["created"], row["finished"] - row["claimed"]),
                        strict=True):
                    phases[name].append(value)
    for proc in list(env.procs):
        env.stop(proc)
    return samples, phases


async def _bare(env: BenchEnv, n: int) -> list[float]:
    redis = env.r()
    queue = env.queue("latency-arq")
    await env.bare_worker(queue, max_jobs=env.settings.max_jobs,
                          poll_delay_s=env.settings.poll_delay_s)
    samples: list[float] = []
    for i in range(WARMUP + n):
        await asyncio.sleep(random.uniform(0.01, 0.06))
        started = time.time()
        job = await redis.enqueue_job("noop", _queue_name=queue)
        assert job is not None
        deadline = time.monotonic() + 30
        while (info := await Job(job.job_id, redis, _queue_name=queue).result_info()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"latency: arq job {job.job_id} did not finish")
            await asyncio.sleep(POLL_S)
        if i >= WARMUP:
            samples.append(info.finish_time.timestamp() - started)
    for proc in list(env.procs):
        env.stop(proc)
    return samples


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """genq, then bare arq; p50 and p99 in milliseconds."""
    n = 40 if quick else 200
    samples, phases = await _genq(env, n)
    genq = [s * 1000 for s in samples]
    bare = [s * 1000 for s in await _bare(env, n)]
    p50_ms = {f"{name}_p50_ms": round(percentile([v * 1000 for v in values], 50), 2)
              for name, values in phases.items()}
    return [
        Row("latency", "latency: submit -> succeeded, idle, p50", percentile(genq, 50),
            percentile(bare, 50), "ms", better="lower", limit=1.5, target="<= 1.5x bare arq",
            notes={"samples": n, **p50_ms}),
        Row("latency", "latency: submit -> succeeded, idle, p99", percentile(genq, 99),
            percentile(bare, 99), "ms", better="lower"),
    ]
