"""Live events and queue position: what an open stream costs, how much sooner a client learns
that its job is done, what the event triggers add to a job, and what a queue position costs.

- **memory per stream**: the resident memory a ``genq api`` process gains with 1,000 open
  ``GET /v1/events`` streams (100 users, 10 each), per stream, against a bare sse-starlette
  stream (``bench/bare_app.py``'s ``/v1/events``: no auth, no subscription, no database),
  served the same way.
- **submit -> event**: with those 1,000 streams open and a worker running, the time from just
  before ``POST /v1/jobs`` to reading the job's ``job.succeeded`` on an open stream, p50,
  against the same jobs found done by polling ``GET /v1/jobs/{id}`` every 0.2 s (the README's
  walkthrough loop), one job at a time, alternating.
- **event cost per job**: the database side of a job as the intake and the worker write it
  (submit in batches, claim in batches, each output counted, final write) with the event
  triggers on, against the same with them off (``ALTER TABLE ... DISABLE TRIGGER``), jobs/s;
  and the pipeline scenario's run (jobs due at one moment, one ``genq worker``) the same way.
- **job read with a deep queue**: ``GET /v1/jobs/{id}`` of a queued job (its queue place
  included) with 100,000 jobs queued, p50, against the same read with one job queued (the
  mean of the p50 before the backlog and after it is gone).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import httpx

from bench import seed
from bench.env import BenchEnv, Proc, wait_http
from bench.report import Row
from bench.stats import percentile
from shared.db import Pool
from shared.embedded import free_port
from sql import queries

STREAMS = 1000
STREAM_USERS = 100
POLL_S = 0.2
EVENT_TRIGGERS = ("generation_jobs_event_insert", "generation_jobs_event_update")


def _rss_mb(proc: Proc) -> float:
    """Resident memory now (VmRSS), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS in /proc status")


async def _open_stream(base: str, path: str, token: str | None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw HTTP/1.1 event stream, its response head read (so the server holds it open)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"events: stream answered {head[:80]!r}")
    return reader, writer


async def _memory_per_stream(proc: Proc, base: str, path: str, tokens: list[str | None],
                             ) -> tuple[float, list[asyncio.StreamWriter]]:
    """KB of resident memory per open stream, and the open streams' writers."""
    await asyncio.sleep(1.0)
    before = _rss_mb(proc)
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, STREAMS, 50):
        opened = await asyncio.gather(*(
            _open_stream(base, path, tokens[i % len(tokens)])
            for i in range(start, min(STREAMS, start + 50))))
        writers.extend(w for _, w in opened)
    await asyncio.sleep(1.0)
    return (_rss_mb(proc) - before) * 1000 / STREAMS, writers


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def _latencies(base: str, token: str, n: int) -> tuple[list[float], list[float]]:
    """Submit -> job.succeeded read on an open stream, and submit -> seen succeeded by
    polling, alternating, one job at a time."""
    body = {"model": "local/sketch", "prompt": "events", "num_outputs": 1,
            "params": seed.TINY_PARAMS}
    headers = {"Authorization": f"Bearer {token}"}
    pushed: list[float] = []
    polled: list[float] = []
    reader, writer = await _open_stream(base, "/v1/events", token)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
            for i in range(n * 2 + 4):
                await asyncio.sleep(random.uniform(0.05, 0.15))
                started = time.perf_counter()
                r = await client.post("/v1/jobs", json=body)
                if r.status_code != 202:
                    raise RuntimeError(f"events: submit answered {r.status_code}: {r.text}")
                job_id = r.json()["id"]
                if i % 2 == 0:
                    async with asyncio.timeout(30):
                        while True:
                            line = await reader.readline()
                            if line.startswith(b"event: job.succeeded"):
                                data = await reader.readline()
                                if job_id.encode() in data:
                                    break
                    if i >= 4:
                        pushed.append(time.perf_counter() - started)
                else:
                    async with asyncio.timeout(30):
                        while (await client.get(f"/v1/jobs/{job_id}")).json()["status"] \
                                != "succeeded":
                            await asyncio.sleep(POLL_S)
                    if i >= 4:
                        polled.append(time.perf_counter() - started)
    finally:
        writer.close()
    return pushed, polled


async def _job_cycle(pool: Pool, user_ids: list[uuid.UUID], n: int) -> float:
    """Jobs per second through the database writes of their whole life."""
    started = time.perf_counter()
    ids = await seed.queued_jobs(pool, user_ids, n, seed.TINY_PARAMS)
    batches = [ids[i:i + 32] for i in range(0, n, 32)]

    async def life(batch: list[uuid.UUID]) -> None:
        claimed = await pool.fetch(queries["claim_jobs"], batch, "bench", 60.0)
        for job in claimed:
            await pool.fetchval(queries["count_output_staged"], job["id"], job["attempt"])
        items = [{"item": i, "job": str(j["id"]), "user_id": str(j["user_id"]),
                  "attempt": j["attempt"], "status": "failed", "made": 0,
                  "error_code": "bench", "error_message": "bench", "assets": []}
                 for i, j in enumerate(claimed)]
        await pool.fetch(queries["finalize_jobs"], items, 3600.0)

    await seed.gather_limited(batches, life)
    return n / (time.perf_counter() - started)


async def _through_worker(env: BenchEnv, owners: list[uuid.UUID], n: int) -> float:
    """The pipeline scenario's run: n jobs written as the intake writes them, enqueued due at
    one moment, one worker; jobs / (last finish - due)."""
    pool = env.db()
    ids = await seed.queued_jobs(pool, owners, n, seed.TINY_PARAMS)
    queue = env.queue(f"events-pipeline-{uuid.uuid4().hex[:6]}")
    worker = await env.genq_worker(queue)
    due = await seed.enqueue_at(env.r(), queue, seed.generation_calls(ids), 1.0 + n * 0.002)
    done = await seed.wait_jobs(pool, ids, 30 + n * 0.1)
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"events: not every job succeeded: {done['statuses']}")
    return n / float(done["last_finished"] - due)


async def set_event_triggers(pool: Pool, enabled: bool) -> None:
    """Turn the job-event triggers on or off (``ALTER TABLE ... ENABLE / DISABLE TRIGGER``)."""
    verb = "ENABLE" if enabled else "DISABLE"
    for name in EVENT_TRIGGERS:
        await pool.execute(f"ALTER TABLE generation_jobs {verb} TRIGGER {name}")


async def _settle(pool: Pool) -> None:
    """Vacuum and analyze the jobs, and let the API process read the events the writes made,
    so a read is measured on a quiet system."""
    await pool.execute("VACUUM ANALYZE generation_jobs")
    await asyncio.sleep(2.0)


async def _read_p50(client: httpx.AsyncClient, job_id: str, n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        r = await client.get(f"/v1/jobs/{job_id}")
        samples.append(time.perf_counter() - started)
        if r.status_code != 200 or r.json()["queue"] is None:
            raise RuntimeError(f"events: job read answered {r.status_code}: {r.text[:200]}")
    return percentile(samples, 50) * 1000


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    pool = env.db()
    queue = env.queue("events")
    n_latency = 15 if quick else 60
    n_cycle = 640 if quick else 3200
    n_worker = 300 if quick else 1000
    deep = 10_000 if quick else 100_000

    # Memory per open stream: genq, then the bare stream.
    api, base = await env.genq_api(queue, GENQ_HTTP_MAX_CONNECTIONS="5000")
    users = await seed.users(pool, STREAM_USERS, 0)
    genq_kb, writers = await _memory_per_stream(
        api, base, "/v1/events", [u.api_key for u in users])
    # Submit -> event against submit -> poll, with the streams open and a worker running.
    await env.genq_worker(queue)
    (client_user,) = await seed.users(pool, 1, 10**9)
    pushed, polled = await _latencies(base, client_user.api_key, n_latency)
    await _close(writers)
    for proc in list(env.procs):
        env.stop(proc)
    bare = env.spawn("bare-sse", ["-m", "bench.bare_app", "--port", str(port := free_port())])
    bare_base = f"http://127.0.0.1:{port}"
    await wait_http(bare, f"{bare_base}/v1/jobs", method="POST")
    bare_kb, bare_writers = await _memory_per_stream(bare, bare_base, "/v1/events", [None])
    await _close(bare_writers)
    env.stop(bare)

    # What the triggers add to a job's database writes, and to a job through a worker: off,
    # on, off, on (the better of each).
    owners = [u.id for u in await seed.users(pool, 8, 10**9)]
    on: list[float] = []
    off: list[float] = []
    worker_on: list[float] = []
    worker_off: list[float] = []
    for enabled in (False, True, False, True):
        await set_event_triggers(pool, enabled)
        try:
            (on if enabled else off).append(await _job_cycle(pool, owners, n_cycle))
            (worker_on if enabled else worker_off).append(
                await _through_worker(env, owners, n_worker))
        finally:
            await set_event_triggers(pool, True)

    # A queued job's read, idle and with a deep queue (no worker: everything stays queued).
    api, base = await env.genq_api(env.queue("events-deep"))
    (reader,) = await seed.users(pool, 1, 10**9)
    [job_id] = await seed.queued_jobs(pool, [reader.id], 1, seed.TINY_PARAMS)
    async with httpx.AsyncClient(base_url=base, timeout=30, headers={
            "Authorization": f"Bearer {reader.api_key}"}) as client:
        await _settle(pool)
        await _read_p50(client, str(job_id), 50)
        idle = [await _read_p50(client, str(job_id), 500)]
        backlog_users = [u.id for u in await seed.users(pool, 20, 10**9)]
        await seed.queued_jobs(pool, backlog_users, deep, seed.TINY_PARAMS)
        await _settle(pool)
        await _read_p50(client, str(job_id), 50)
        loaded = await _read_p50(client, str(job_id), 500)
        # The idle read again once the backlog is gone, so drift of the machine during the
        # run weighs on both sides.
        await pool.execute("DELETE FROM generation_jobs WHERE user_id = ANY($1::uuid[])",
                           backlog_users)
        await _settle(pool)
        await _read_p50(client, str(job_id), 50)
        idle.append(await _read_p50(client, str(job_id), 500))
    env.stop(api)

    return [
        Row("events", f"events: memory per open SSE stream ({STREAMS} streams)", genq_kb,
            bare_kb, "KB", better="lower",
            notes={"streams": STREAMS, "users": STREAM_USERS}),
        Row("events", "events: submit -> job.succeeded, p50 (stream vs polling every 0.2 s)",
            percentile(pushed, 50) * 1000, percentile(polled, 50) * 1000, "ms",
            better="lower", limit=1.0, target="< polling",
            notes={"samples": len(pushed), "open_streams": STREAMS}),
        Row("events", "events: job database writes/s, event triggers on vs off", max(on),
            max(off), "jobs/s", limit=0.8, target=">= 0.8x off",
            notes={"jobs": n_cycle, "on": on, "off": off}),
        Row("events", "events: jobs/s through one worker, event triggers on vs off",
            max(worker_on), max(worker_off), "jobs/s", limit=0.8, target=">= 0.8x off",
            notes={"jobs": n_worker, "on": worker_on, "off": worker_off}),
        Row("events", f"events: GET /v1/jobs/{{id}} p50, {deep:,} queued vs 1", loaded,
            sum(idle) / len(idle), "ms", better="lower", limit=2.0, target="<= 2x idle",
            notes={"queued": deep, "idle_before_and_after": idle}),
    ]
