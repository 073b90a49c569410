"""Many slow jobs at once: 10,000 jobs on the local provider with 2 s of simulated latency, one
worker process allowed 10,000 concurrent jobs. Wall time from due to last finish (the floor is
2 s), and the worker's peak memory; the baseline is a bare arq worker whose jobs sleep 2 s."""

from __future__ import annotations

import uuid

from bench import seed
from bench.env import BenchEnv
from bench.report import Row

LATENCY_S = 2.0


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """genq's worker, then the bare one."""
    n = 300 if quick else 10_000
    pool, redis = env.db(), env.r()
    lead_s = 1.0 + n * 0.002

    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, seed.TINY_PARAMS)
    queue = env.queue("inflight")
    worker = await env.genq_worker(queue, GENQ_MAX_JOBS=str(n),
                                   GENQ_LOCAL_LATENCY_S=str(LATENCY_S))
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), lead_s)
    done = await seed.wait_jobs(pool, ids, 120 + n * 0.05)
    genq_wall = done["last_finished"] - due
    genq_rss = worker.peak_rss_mb()
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"inflight: not every job succeeded: {done['statuses']}")

    bare_queue = env.queue("inflight-arq")
    bare = await env.bare_worker(bare_queue, max_jobs=n, poll_delay_s=env.settings.poll_delay_s)
    calls = [(uuid.uuid4().hex, "sleep", (LATENCY_S,)) for _ in range(n)]
    due = await seed.enqueue_at(redis, bare_queue, calls, lead_s)
    bare_done = await seed.wait_arq(redis, bare_queue, [c[0] for c in calls],
                                     120 + n * 0.05)
    bare_wall = bare_done["last_finished"] - due
    bare_rss = bare.peak_rss_mb()
    env.stop(bare)

    label = f"{n:,} x 2 s jobs (local provider)"
    return [
        Row("inflight", f"in flight: {label}, wall time", genq_wall, bare_wall, "s",
            better="lower", limit=1.5, target="<= 1.5x bare arq sleeping 2 s",
            notes={"jobs": n}),
        Row("inflight", f"in flight: {label}, worker peak RSS", genq_rss, bare_rss, "MB",
            better="lower", limit=400.0, on="genq", target="<= 400 MB"),
    ]
