"""Webhooks: how fast the delivery loop sends, and what webhooks cost the pipeline.

- **deliveries**: ``n`` jobs with a webhook are canceled in one transaction (the outbox trigger
  writes ``n`` deliveries), and an idle ``genq scheduler`` (its delivery loop, with
  ``GENQ_WEBHOOK_PER_RECEIVER`` as large as ``GENQ_WEBHOOK_CONCURRENCY``, so the one receiver
  may take all of it) sends them to a local receiver (``bench/receiver.py``): deliveries / (last
  delivery recorded - the commit). Baseline: ``httpx`` POSTing the same number of bodies of the
  same size to the same receiver, as many at once, from this process, with nothing recorded.
- **pipeline**: the pipeline scenario's run (one worker, jobs written as the intake writes them,
  enqueued due at one moment) with a scheduler running beside the worker, with every job's
  webhook set (``completed``, to the local receiver) against none; each twice, alternating,
  the better of each counted. CPU seconds of the worker, the scheduler and PostgreSQL per job
  in the notes say where the difference goes; the machine's stolen CPU per job and its load
  average say whether something else (the host, other processes) slowed a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

import httpx

from bench import seed
from bench.cpu import Snapshot, cpu_seconds
from bench.env import BenchEnv, Proc, wait_http
from bench.report import Row
from shared.embedded import free_port
from shared.retry import retry

CONCURRENCY = 64


async def _receiver(env: BenchEnv) -> tuple[Proc, str]:
    port = free_port()
    proc = env.spawn("webhook-receiver", ["-m", "bench.receiver", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    await wait_http(proc, url, method="POST")
    return proc, url


async def _with_webhooks(env: BenchEnv, ids: list[uuid.UUID], url: str) -> None:
    """What the intake writes for jobs submitted with ``webhook_url``."""
    await env.db().execute(
        "WITH h AS (INSERT INTO job_webhooks (job_id, url, events)"
        " SELECT id, $2, ARRAY['completed'] FROM unnest($1::uuid[]) AS id RETURNING job_id)"
        " UPDATE generation_jobs j SET has_webhook = true FROM h WHERE j.id = h.job_id",
        ids, url)


async def _scheduler(env: BenchEnv, queue: str, **extra: str) -> Proc:
    proc = env.spawn("genq-scheduler", ["-m", "genq", "scheduler"], env.genq_env(
        queue, GENQ_WEBHOOK_ALLOWED_HOSTS="127.0.0.1", GENQ_LOG_LEVEL="warning", **extra))
    await asyncio.sleep(3.0)  # started and idle
    if not proc.alive():
        raise RuntimeError(f"webhooks: the scheduler exited: {proc.tail()}")
    return proc


async def _wait_delivered(env: BenchEnv, ids: list[uuid.UUID], timeout_s: float) -> float:
    """Wait until every delivery of these jobs is delivered; the last one's epoch time."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await env.db().fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'delivered') AS done, count(*) AS n,"
            " max(extract(epoch FROM finished_at))::float8 AS last"
            " FROM webhook_deliveries WHERE job_id = ANY($1::uuid[])", ids)
        assert row is not None
        if row["done"] == len(ids):
            return float(row["last"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"webhooks: {row['done']} of {len(ids)} delivered")
        await asyncio.sleep(seed.POLL_S)


async def _deliveries(env: BenchEnv, n: int, url: str) -> tuple[float, dict[str, Any]]:
    pool = env.db()
    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, seed.TINY_PARAMS)
    await _with_webhooks(env, ids, url)
    queue = env.queue("webhooks-deliveries")
    scheduler = await _scheduler(env, queue, GENQ_WEBHOOK_CONCURRENCY=str(CONCURRENCY),
                                 GENQ_WEBHOOK_PER_RECEIVER=str(CONCURRENCY))
    started = time.perf_counter()
    committed = float(await pool.fetchval(
        "WITH c AS (UPDATE generation_jobs SET status = 'canceled', finished_at = now()"
        " WHERE id = ANY($1::uuid[]) RETURNING 1) SELECT extract(epoch FROM now())::float8",
        ids))
    outbox_s = time.perf_counter() - started
    before = Snapshot.take()
    cpu_before = scheduler.cpu_s()
    last = await _wait_delivered(env, ids, 60 + n * 0.05)
    after = Snapshot.take()
    used = cpu_seconds(before, after, scheduler.pid)
    scheduler_cpu = scheduler.cpu_s() - cpu_before
    env.stop(scheduler)
    body = await pool.fetchval(
        "SELECT length(snapshot::text) FROM webhook_deliveries WHERE job_id = $1", ids[0])
    return n / (last - committed), {
        "deliveries": n, "outbox_commit_s": round(outbox_s, 3),
        "scheduler_cpu_us_per_delivery": scheduler_cpu / n * 1e6,
        "postgres_cpu_us_per_delivery": used["postgres"] / n * 1e6,
        "snapshot_bytes": body,
    }


async def _bare_deliveries(n: int, url: str, body_bytes: int) -> float:
    """POSTs per second of plain httpx with the same concurrency and body size."""
    body = json.dumps({"id": "x", "type": "job.completed", "data": "x" * body_bytes})
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        async def one(i: int) -> None:
            async def post() -> None:
                r = await client.post(url, content=body, headers={
                    "Content-Type": "application/json", "webhook-id": str(i)})
                r.raise_for_status()

            async with sem:
                # A failed POST is tried again, as genq tries a failed delivery again.
                await retry(post, what="bare webhook POST", attempts=3, base_s=0.0, max_s=0.0,
                            retry_on=lambda exc: isinstance(exc, httpx.TransportError))

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


async def _pipeline(env: BenchEnv, n: int, name: str,
                    url: str | None) -> tuple[float, dict[str, Any]]:
    """Jobs per second of one worker over ``n`` jobs, a scheduler running beside it; with
    ``url``, every job has a webhook to it (and the delivery lag is noted)."""
    pool, redis = env.db(), env.r()
    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, seed.TINY_PARAMS)
    await pool.execute("UPDATE generation_jobs SET enqueued_at = now() WHERE id = ANY($1)", ids)
    if url is not None:
        await _with_webhooks(env, ids, url)
    queue = env.queue(name)
    scheduler = await _scheduler(env, queue)
    worker = await env.genq_worker(queue)
    before = Snapshot.take()
    cpu = {"worker": worker.cpu_s(), "scheduler": scheduler.cpu_s()}
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), 1.0 + n * 0.002)
    done = await seed.wait_jobs(pool, ids, 30 + n * 0.1)
    after = Snapshot.take()
    used = cpu_seconds(before, after, worker.pid)
    notes: dict[str, Any] = {
        "worker_cpu_us_per_job": (worker.cpu_s() - cpu["worker"]) / n * 1e6,
        "scheduler_cpu_us_per_job": (scheduler.cpu_s() - cpu["scheduler"]) / n * 1e6,
        "postgres_cpu_us_per_job": used["postgres"] / n * 1e6,
        "machine_cpu_us_per_job": used["machine"] / n * 1e6,
        "steal_cpu_us_per_job": used["steal"] / n * 1e6,
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    if url is not None:
        last = await _wait_delivered(env, ids, 60 + n * 0.05)
        notes["last_delivery_after_last_job_s"] = round(last - done["last_finished"], 3)
    env.stop(worker)
    env.stop(scheduler)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"webhooks: {name}: not every job succeeded: {done['statuses']}")
    return float(n / (done["last_finished"] - due)), notes


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    n = 300 if quick else 2000
    receiver, url = await _receiver(env)
    try:
        rate, notes = await _deliveries(env, n, url)
        bare = await _bare_deliveries(n, url, int(notes["snapshot_bytes"]))
        off1, off1_notes = await _pipeline(env, n, "webhooks-off-1", None)
        on1, on1_notes = await _pipeline(env, n, "webhooks-on-1", url)
        off2, off2_notes = await _pipeline(env, n, "webhooks-off-2", None)
        on2, on2_notes = await _pipeline(env, n, "webhooks-on-2", url)
    finally:
        env.stop(receiver)
    return [
        Row("webhooks", "webhooks: deliveries/s to one local receiver vs bare httpx POSTs",
            rate, bare, "deliveries/s", target="none (reported)",
            notes={**notes, "concurrency": CONCURRENCY}),
        Row("webhooks", "webhooks: pipeline jobs/s, every job with a webhook vs none",
            max(on1, on2), max(off1, off2), "jobs/s", limit=0.9, target=">= 0.9x without",
            notes={"jobs": n, "with": [on1, on2], "without": [off1, off2],
                   "with_cpu": [on1_notes, on2_notes], "without_cpu": [off1_notes, off2_notes]}),
    ]
