"""Fair sharing: what the per-user running cap and the per-model limits cost, and what the cap
buys a newly arriving user.

- **throughput**: the pipeline scenario's run (jobs written as the intake writes them, then all
  enqueued due at one moment, one worker) with ``GENQ_USER_MAX_RUNNING`` and the model's
  ``max_concurrency`` / ``max_per_minute`` configured far above what the run reaches (so every
  job still runs at once: the cost is the bookkeeping), against the same run without them.
  The two alternate over several rounds and each side counts its median, so a machine that
  slows down or speeds up during the run weighs on both alike; beside the rate, the CPU each
  job cost the worker and the run's own PostgreSQL and Redis processes (from ``/proc``: other
  load on the machine does not count there).
- **newcomer**: the time from ``POST /v1/jobs`` to ``finished_at`` of a new user's first job
  while another user has 5,000 jobs queued, with a cap of 5 and jobs of 0.2 s, against the same
  first job on the idle system (same settings, no backlog).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import cpu, seed
from bench.env import BenchEnv
from bench.report import Row
from bench.stats import percentile
from shared.dispatch import dispatch

NOT_BINDING = "1000000"
# The built-in local/sketch with limits far above what a run reaches.
LIMITED_MODELS = """
[[models]]
key = "local/sketch"
provider = "local"
ref = "sketch"
media_type = "image"
price_per_output = 1
max_outputs = 8
timeout_s = 60
params = { width = 256, height = 256, format = "png" }
description = "Offline PNG renderer: deterministic from prompt and seed."
price_tiers = [
    { above_megapixels = 0.3, price_per_output = 2 },
    { above_megapixels = 1.1, price_per_output = 4 },
    { above_megapixels = 2.2, price_per_output = 8 },
]
max_concurrency = 1000000
max_per_minute = 1000000

[models.params_schema.properties]
width = { type = "integer", minimum = 1, maximum = 2048 }
height = { type = "integer", minimum = 1, maximum = 2048 }
format = { enum = ["png", "webp"] }
"""
CAP = 5
JOB_S = 0.2
BACKLOG = 5000


@dataclass(frozen=True)
class PipelineRun:
    """One run: jobs per second, and CPU microseconds per job by component."""

    rate: float
    cpu_us: dict[str, float]


async def _service_pids(env: BenchEnv) -> set[int]:
    """The run's own PostgreSQL (every backend and helper process) and Redis server."""
    pids = {r["pid"] for r in await env.db().fetch(
        "SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL")}
    info = await env.r().info("server")
    pids.add(int(info["process_id"]))
    return pids


async def _pipeline(env: BenchEnv, n: int, name: str, **extra: str) -> PipelineRun:
    """One worker over ``n`` jobs enqueued due at one moment."""
    pool, redis = env.db(), env.r()
    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, seed.TINY_PARAMS)
    # As the intake leaves them once enqueued (with a cap, a job without enqueued_at waits).
    await pool.execute("UPDATE generation_jobs SET enqueued_at = now() WHERE id = ANY($1)", ids)
    queue = env.queue(name)
    worker = await env.genq_worker(queue, **extra)
    before = cpu.Snapshot.take()
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), 1.0 + n * 0.002)
    done = await seed.wait_jobs(pool, ids, 30 + n * 0.1)
    used = cpu.cpu_seconds(before, cpu.Snapshot.take(), worker.pid, await _service_pids(env))
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"fair: {name}: not every job succeeded: {done['statuses']}")
    per_job = {"worker" if k == "server" else k: v / n * 1e6 for k, v in used.items()
               if k != "machine"}
    per_job["total"] = sum(per_job.values())
    return PipelineRun(float(n / (done["last_finished"] - due)), per_job)


def _median_cpu(runs: list[PipelineRun]) -> dict[str, float]:
    return {k: statistics.median(r.cpu_us[k] for r in runs) for k in runs[0].cpu_us}


async def _first_jobs(env: BenchEnv, base: str, samples: int) -> list[float]:
    """Submit-to-finished of ``samples`` new users' first jobs, one at a time."""
    pool = env.db()
    users = await seed.users(pool, samples, 10)
    body = {"model": "local/sketch", "prompt": "newcomer", "num_outputs": 1,
            "params": seed.TINY_PARAMS}
    out: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for user in users:
            await asyncio.sleep(random.uniform(0.01, 0.06))
            started = time.time()
            r = await client.post("/v1/jobs", json=body,
                                  headers={"Authorization": f"Bearer {user.api_key}"})
            if r.status_code != 202:
                raise RuntimeError(f"fair: submit answered {r.status_code}: {r.text}")
            job_id = uuid.UUID(r.json()["id"])
            deadline = time.monotonic() + 30
            while True:
                finished = await pool.fetchval(
                    "SELECT extract(epoch FROM finished_at)::float8 FROM generation_jobs"
                    " WHERE id = $1", job_id)
                if finished is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fair: job {job_id} did not finish")
                await asyncio.sleep(0.002)
            out.append(finished - started)
    return out


async def _newcomers(env: BenchEnv, samples: int, backlog: int) -> tuple[list[float], int]:
    """First-job latencies with ``backlog`` jobs of another user queued; how many of those were
    still waiting at the end."""
    pool, redis = env.db(), env.r()
    queue = env.queue(f"fair-newcomer-{backlog}")
    extra = {"GENQ_USER_MAX_RUNNING": str(CAP), "GENQ_LOCAL_LATENCY_S": str(JOB_S)}
    api, base = await env.genq_api(queue, **extra)
    worker = await env.genq_worker(queue, **extra)
    hot_ids: list[uuid.UUID] = []
    if backlog:
        (hot,) = await seed.users(pool, 1, 10**9)
        hot_ids = await seed.queued_jobs(pool, [hot.id], backlog, seed.TINY_PARAMS)
        # What the intake does at each of those submits: the first CAP go, the rest wait.
        await dispatch(pool, redis, queue, [hot.id], CAP)
    latencies = await _first_jobs(env, base, samples)
    waiting = 0
    if hot_ids:
        waiting = int(await pool.fetchval(
            "SELECT count(*) FROM generation_jobs WHERE id = ANY($1) AND status = 'queued'",
            hot_ids))
        await pool.execute("UPDATE generation_jobs SET status = 'canceled', finished_at = now()"
                           " WHERE id = ANY($1) AND status = 'queued'", hot_ids)
    env.stop(worker)
    env.stop(api)
    return latencies, waiting


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    n = 300 if quick else 2000
    rounds = 2 if quick else 3
    samples = 20 if quick else 100
    models_file = Path(env.work_dir) / "fair-models.toml"
    models_file.write_text(LIMITED_MODELS)
    limited_env = {"GENQ_USER_MAX_RUNNING": NOT_BINDING, "GENQ_MODELS_FILE": str(models_file)}
    # A first worker on a fresh database is often the slowest: one run to warm up, uncounted.
    await _pipeline(env, n, "fair-warmup")
    plain: list[PipelineRun] = []
    limited: list[PipelineRun] = []
    for i in range(rounds):
        plain.append(await _pipeline(env, n, f"fair-plain-{i}"))
        limited.append(await _pipeline(env, n, f"fair-limited-{i}", **limited_env))
    cap_only = await _pipeline(env, n, "fair-cap", GENQ_USER_MAX_RUNNING=NOT_BINDING)
    models_only = await _pipeline(env, n, "fair-models", GENQ_MODELS_FILE=str(models_file))
    plain_rate = statistics.median(r.rate for r in plain)
    limited_rate = statistics.median(r.rate for r in limited)
    plain_cpu, limited_cpu = _median_cpu(plain), _median_cpu(limited)
    # Put the built-in catalog back for the scenarios after this one.
    quiet = await env.genq_worker(env.queue("fair-reset"))
    env.stop(quiet)

    idle, _ = await _newcomers(env, samples, 0)
    busy, waiting = await _newcomers(env, samples, BACKLOG)
    idle_p50, busy_p50 = percentile(idle, 50) * 1000, percentile(busy, 50) * 1000
    return [
        Row("fair", "fair: pipeline jobs/s, caps and model limits set (not binding) vs none",
            limited_rate, plain_rate, "jobs/s", limit=0.9, target=">= 0.9x without",
            notes={"jobs": n, "rounds": rounds,
                   "without": [r.rate for r in plain], "with": [r.rate for r in limited]}),
        Row("fair", "fair: CPU per job (worker, its PostgreSQL and Redis), caps and limits set"
            " vs none", limited_cpu["total"], plain_cpu["total"], "us", better="lower",
            notes={"with": limited_cpu, "without": plain_cpu}),
        Row("fair", "fair: pipeline jobs/s, user cap set (not binding) vs none", cap_only.rate,
            plain_rate, "jobs/s", notes={"jobs": n, "cpu_us": cap_only.cpu_us}),
        Row("fair", "fair: pipeline jobs/s, model limits set (not binding) vs none",
            models_only.rate, plain_rate, "jobs/s",
            notes={"jobs": n, "cpu_us": models_only.cpu_us}),
        Row("fair", f"fair: new user's first job, p50, {BACKLOG:,} of another user queued vs idle",
            busy_p50, idle_p50, "ms", better="lower", limit=2.0, target="<= 2x idle",
            notes={"samples": samples, "cap": CAP, "job_s": JOB_S,
                   "busy_p99_ms": percentile(busy, 99) * 1000,
                   "idle_p99_ms": percentile(idle, 99) * 1000,
                   "backlog_still_queued_at_end": waiting}),
    ]
