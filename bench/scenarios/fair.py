"""Fair sharing: what the per-user running cap and the per-model limits cost, and what the cap
buys a newly arriving user.

- **throughput**: the pipeline scenario's run (jobs written as the intake writes them, then all
  enqueued due at one moment) with ``GENQ_USER_MAX_RUNNING`` and the model's
  ``max_concurrency`` / ``max_per_minute`` configured far above what the run reaches (so every
  job still runs at once: the cost is the bookkeeping), against the same run without them.
  The workers of each configuration (none, both, the cap alone, the model limits alone) run
  at the same time, each on its own queue and jobs, all due at the same moment: they share
  the machine and its services alike, so whatever else loads the machine weighs on each the
  same, and a configuration that costs more per job gets through fewer. Each figure is the
  median over rounds, with the worker's own CPU per job (from ``/proc``) beside it.
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

from bench import seed
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
    """One worker's run: jobs per second, and its CPU microseconds per job."""

    rate: float
    worker_cpu_us: float


async def _pipelines(env: BenchEnv, n: int, name: str,
                     configs: dict[str, dict[str, str]]) -> dict[str, PipelineRun]:
    """One worker per configuration, each over its own ``n`` jobs, all due at one moment."""
    pool, redis = env.db(), env.r()
    jobs: dict[str, list[uuid.UUID]] = {}
    for config in configs:
        accounts = await seed.users(pool, 16, 10**9)
        jobs[config] = await seed.queued_jobs(pool, [u.id for u in accounts], n,
                                              seed.TINY_PARAMS)
    # As the intake leaves them once enqueued (with a cap, a job without enqueued_at waits).
    await pool.execute("UPDATE generation_jobs SET enqueued_at = now() WHERE id = ANY($1)",
                       [i for ids in jobs.values() for i in ids])
    workers = {config: await env.genq_worker(env.queue(f"{name}-{config}"), **extra)
               for config, extra in configs.items()}
    cpu0 = {config: w.cpu_s() for config, w in workers.items()}
    lead_s = 1.0 + len(configs) * n * 0.002
    dues = await asyncio.gather(*(
        seed.enqueue_at(redis, env.queue(f"{name}-{config}"), seed.generation_calls(ids),
                        lead_s)
        for config, ids in jobs.items()))

    async def finish(config: str, due: float) -> PipelineRun:
        done = await seed.wait_jobs(pool, jobs[config], 30 + len(configs) * n * 0.1)
        used_s = workers[config].cpu_s() - cpu0[config]
        if done["statuses"] != {"succeeded": n}:
            raise RuntimeError(f"fair: {config}: not every job succeeded: {done['statuses']}")
        return PipelineRun(float(n / (done["last_finished"] - due)), used_s / n * 1e6)

    try:
        runs = await asyncio.gather(*(finish(c, due) for c, due in zip(jobs, dues, strict=True)))
    finally:
        for worker in workers.values():
            env.stop(worker)
    return dict(zip(jobs, runs, strict=True))


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
    configs = {
        "none": {},
        "both": {"GENQ_USER_MAX_RUNNING": NOT_BINDING, "GENQ_MODELS_FILE": str(models_file)},
        "cap": {"GENQ_USER_MAX_RUNNING": NOT_BINDING},
        "models": {"GENQ_MODELS_FILE": str(models_file)},
    }
    runs: list[dict[str, PipelineRun]] = []
    for i in range(rounds):
        # Each round starts the workers in another order.
        order = list(configs)[i % len(configs):] + list(configs)[:i % len(configs)]
        runs.append(await _pipelines(env, n, f"fair-{i}", {c: configs[c] for c in order}))

    def rate(config: str) -> float:
        return statistics.median(r[config].rate for r in runs)

    def cpu_us(config: str) -> float:
        return statistics.median(r[config].worker_cpu_us for r in runs)

    def notes(config: str) -> dict[str, object]:
        return {"jobs": n, "rounds": rounds, "rates": [r[config].rate for r in runs],
                "without": [r["none"].rate for r in runs],
                "worker_cpu_us_per_job": cpu_us(config),
                "without_worker_cpu_us_per_job": cpu_us("none")}

    # Put the built-in catalog back for the scenarios after this one.
    quiet = await env.genq_worker(env.queue("fair-reset"))
    env.stop(quiet)

    idle, _ = await _newcomers(env, samples, 0)
    busy, waiting = await _newcomers(env, samples, BACKLOG)
    idle_p50, busy_p50 = percentile(idle, 50) * 1000, percentile(busy, 50) * 1000
    return [
        Row("fair", "fair: pipeline jobs/s, caps and model limits set (not binding) vs none",
            rate("both"), rate("none"), "jobs/s", limit=0.9, target=">= 0.9x without",
            notes=notes("both")),
        Row("fair", "fair: worker CPU per job, caps and model limits set vs none",
            cpu_us("both"), cpu_us("none"), "us", better="lower", notes=notes("both")),
        Row("fair", "fair: pipeline jobs/s, user cap set (not binding) vs none", rate("cap"),
            rate("none"), "jobs/s", notes=notes("cap")),
        Row("fair", "fair: pipeline jobs/s, model limits set (not binding) vs none",
            rate("models"), rate("none"), "jobs/s", notes=notes("models")),
        Row("fair", f"fair: new user's first job, p50, {BACKLOG:,} of another user queued vs idle",
            busy_p50, idle_p50, "ms", better="lower", limit=2.0, target="<= 2x idle",
            notes={"samples": samples, "cap": CAP, "job_s": JOB_S,
                   "busy_p99_ms": percentile(busy, 99) * 1000,
                   "idle_p99_ms": percentile(idle, 99) * 1000,
                   "backlog_still_queued_at_end": waiting}),
    ]
