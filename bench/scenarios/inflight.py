"""Many slow jobs at once: 10,000 Replicate jobs in one worker process allowed 10,000
concurrent jobs, against the fake Replicate (``tests/fakes/replicate_server.py``) run as a
process of its own, over HTTP, every prediction taking 2 s. Wall time from due to last finish
(the floor is 2 s), the worker's peak memory, and how many GETs the worker's poller made per
job; the baseline is a bare arq worker whose jobs sleep 2 s.

The provider floor runs against the same fake process: a bare arq worker whose jobs each do
what genq's provider path must do with no genq code (``replicate_floor`` in
``bench/bare_arq.py``: the ``replicate`` client's create, one GET once the prediction's 2 s
are over, then every 0.5 s until it ends, and the output's download). Against bare arq
sleeping 2 s it shows what the target can reach at all with the ``replicate`` client here.
Each worker's CPU per job counts from the moment it is ready (not its start-up)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from bench import seed
from bench.env import BenchEnv, wait_http
from bench.report import Row
from shared.embedded import free_port

LATENCY_S = 2.0
MODEL = "replicate/inflight"
MODELS = f"""
[[models]]
key = "{MODEL}"
provider = "replicate"
ref = "acme/inflight"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 600
"""


async def _bare(env: BenchEnv, scenario: str, calls: list[tuple[str, str, tuple[Any, ...]]],
                lead_s: float, replicate_url: str | None = None) -> tuple[float, float, float]:
    """Run ``calls`` on a bare arq worker allowed all of them at once: wall time from due to
    the last finish, peak RSS (MB) and CPU seconds from the moment it was ready."""
    queue = env.queue(scenario)
    n = len(calls)
    worker = await env.bare_worker(queue, max_jobs=n, poll_delay_s=env.settings.poll_delay_s,
                                   replicate_url=replicate_url)
    cpu_start = worker.cpu_s()
    due = await seed.enqueue_at(env.r(), queue, calls, lead_s)
    done = await seed.wait_arq(env.r(), queue, [c[0] for c in calls], 120 + n * 0.05)
    wall, rss, cpu_s = done["last_finished"] - due, worker.peak_rss_mb(), worker.cpu_s() - cpu_start
    env.stop(worker)
    return wall, rss, cpu_s


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """genq's worker against the fake Replicate, then the bare one."""
    n = 300 if quick else 10_000
    pool, redis = env.db(), env.r()
    lead_s = 1.0 + n * 0.002

    port = free_port()
    fake = env.spawn("fake-replicate", [
        "-m", "tests.fakes.replicate_server", "--port", str(port), "--model", "acme/inflight",
        "--min-runtime-s", str(LATENCY_S)])
    base = f"http://127.0.0.1:{port}"
    await wait_http(fake, f"{base}/_fake/stats")
    models_file = Path(env.work_dir) / "inflight-models.toml"
    models_file.write_text(MODELS)

    queue = env.queue("inflight")
    # The worker puts the model in the catalog as it starts; the jobs are made after that.
    worker = await env.genq_worker(
        queue, "genq-worker-inflight", GENQ_MAX_JOBS=str(n), GENQ_MODELS_FILE=str(models_file),
        GENQ_REPLICATE_BASE_URL=f"{base}/v1", GENQ_REPLICATE_API_TOKEN="bench-token",
        GENQ_OUTPUT_ALLOWED_HOSTS="127.0.0.1")
    # CPU per job counts from here: not the process's start-up.
    genq_cpu_start = worker.cpu_s()
    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, {}, model=MODEL)
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), lead_s)
    done = await seed.wait_jobs(pool, ids, 120 + n * 0.05)
    genq_wall = done["last_finished"] - due
    genq_rss = worker.peak_rss_mb()
    genq_cpu_s = worker.cpu_s() - genq_cpu_start
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{base}/_fake/stats")).json()
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"inflight: not every job succeeded: {done['statuses']}")

    floor_calls = [(uuid.uuid4().hex, "replicate_floor", ("acme/inflight", LATENCY_S))
                   for _ in range(n)]
    floor_wall, floor_rss, floor_cpu_s = await _bare(env, "inflight-floor", floor_calls, lead_s,
                                                     replicate_url=base)
    async with httpx.AsyncClient() as client:
        floor_stats = (await client.get(f"{base}/_fake/stats")).json()
    env.stop(fake)
    if floor_stats["creates"] - stats["creates"] != n:
        raise RuntimeError("inflight: the provider floor did not create every prediction")
    # Put the built-in catalog back for the scenarios after this one.
    env.stop(await env.genq_worker(env.queue("inflight-reset")))

    calls = [(uuid.uuid4().hex, "sleep", (LATENCY_S,)) for _ in range(n)]
    bare_wall, bare_rss, bare_cpu_s = await _bare(env, "inflight-arq", calls, lead_s)

    label = f"{n:,} x 2 s Replicate jobs (fake Replicate over HTTP)"
    notes = {"jobs": n, "prediction_gets": stats["prediction_gets"],
             "gets_per_job": stats["prediction_gets"] / n, "creates": stats["creates"],
             "worker_cpu_ms_per_job": genq_cpu_s * 1000 / n,
             "bare_cpu_ms_per_job": bare_cpu_s * 1000 / n,
             "floor_wall_s": floor_wall, "floor_rss_mb": floor_rss,
             "floor_cpu_ms_per_job": floor_cpu_s * 1000 / n,
             "floor_gets_per_job": (floor_stats["prediction_gets"] - stats["prediction_gets"]) / n}
    return [
        Row("inflight", f"in flight: {label}, wall time", genq_wall, bare_wall, "s",
            better="lower", limit=1.5, target="<= 1.5x bare arq sleeping 2 s", notes=notes),
        Row("inflight", f"in flight: {label}, worker peak RSS", genq_rss, bare_rss, "MB",
            better="lower", limit=400.0, on="genq", target="<= 400 MB", notes=notes),
        # The provider floor in the "genq" column: what any worker that creates, polls and
        # downloads through the replicate client reaches against bare arq sleeping.
        Row("inflight", f"in flight floor (replicate client: create, poll, download) vs bare arq"
            f" sleeping, {n:,} jobs, wall time", floor_wall, bare_wall, "s", better="lower",
            notes=notes),
        Row("inflight", "in flight: worker CPU per job vs provider floor",
            genq_cpu_s * 1000 / n, floor_cpu_s * 1000 / n, "ms", better="lower", notes=notes),
        Row("inflight", "in flight: wall time vs provider floor", genq_wall, floor_wall, "s",
            better="lower", notes=notes),
    ]
