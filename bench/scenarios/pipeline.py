"""Jobs per second through one worker process: genq's worker on the local provider (no delay,
1x1 output) from enqueue to ``succeeded``, against a bare arq worker running a no-op.

Jobs are written to Postgres first (as the intake writes them), then all enqueued due at one
moment, so the figure is the worker's rate, not the enqueuer's: jobs / (last finish - due).

The worker floors run the same way, each a bare arq function (``bench/bare_arq.py``): one small
file written and fsynced plus one autocommit UPDATE per job (what any worker that must record
each job durably can reach here); the same with the UPDATEs group-committed; the file alone; the
UPDATE alone; and the floor with genq's rows and files (``rows_floor``): genq's own queued jobs
claimed, their output and thumbnail files and folder fsynced, counted and finalized with the
plainest SQL, group-committed, no image rendered: what any worker that writes genq's rows and
files can reach here. CPU per job, by process, comes from ``/proc`` (``bench/cpu.py``).
"""

from __future__ import annotations

import uuid
from typing import Any

from bench import cpu, floor, pgstat, seed
from bench.env import BenchEnv
from bench.report import Row


def _per_job(used_s: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: seconds / jobs * 1e6 for name, seconds in used_s.items()}


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """Both workers, one after the other, on fresh queues."""
    n = 300 if quick else 2000
    pool, redis, settings = env.db(), env.r(), env.settings
    lead_s = 1.0 + n * 0.002
    timeout_s = 30 + n * 0.1

    accounts = await seed.users(pool, 16, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, seed.TINY_PARAMS)
    queue = env.queue("pipeline")
    worker = await env.genq_worker(queue)
    cpu0 = worker.cpu_s()
    profile = pgstat.Profile(pool)
    await profile.start()
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), lead_s)
    before = cpu.Snapshot.take()
    done = await seed.wait_jobs(pool, ids, timeout_s)
    genq_used = cpu.cpu_seconds(before, cpu.Snapshot.take(), worker.pid)
    statements = await profile.notes(n)
    genq_wall = done["last_finished"] - due
    genq_cpu = worker.cpu_s() - cpu0
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"pipeline: not every job succeeded: {done['statuses']}")

    bare_queue = env.queue("pipeline-arq")
    bare = await env.bare_worker(bare_queue, max_jobs=settings.max_jobs,
                                 poll_delay_s=settings.poll_delay_s)
    cpu0 = bare.cpu_s()
    calls: list[tuple[str, str, tuple[Any, ...]]] = [
        (uuid.uuid4().hex, "noop", ()) for _ in range(n)
    ]
    due = await seed.enqueue_at(redis, bare_queue, calls, lead_s)
    before = cpu.Snapshot.take()
    bare_done = await seed.wait_arq(redis, bare_queue, [c[0] for c in calls], timeout_s)
    bare_used = cpu.cpu_seconds(before, cpu.Snapshot.take(), bare.pid)
    bare_wall = bare_done["last_finished"] - due
    bare_cpu = bare.cpu_s() - cpu0
    env.stop(bare)

    await pool.execute(floor.CREATE_TABLE)
    floor_queue = env.queue("pipeline-floor")
    floor_worker = await env.bare_worker(floor_queue, max_jobs=settings.max_jobs,
                                         poll_delay_s=settings.poll_delay_s, floor=True)
    walls: dict[str, float] = {}
    floor_cpu: dict[str, float] = {}
    floor_used: dict[str, dict[str, float]] = {}
    for fn in ("floor", "floor_grouped", "floor_file", "floor_update", "rows_floor"):
        if fn == "rows_floor":
            # genq's own queued jobs, as genq's worker got them above
            genq_jobs = await seed.queued_jobs(pool, [u.id for u in accounts], n,
                                               seed.TINY_PARAMS)
            rows: list[Any] = genq_jobs
        else:
            rows = [uuid.uuid4() for _ in range(n)]
            await pool.executemany(floor.INSERT_ROW, [(r, "pipeline") for r in rows])
        calls = [(str(r), fn, (str(r),)) for r in rows]
        cpu0 = floor_worker.cpu_s()
        due = await seed.enqueue_at(redis, floor_queue, calls, lead_s)
        fbefore = cpu.Snapshot.take()
        fdone = await seed.wait_arq(redis, floor_queue, [c[0] for c in calls], timeout_s)
        walls[fn] = fdone["last_finished"] - due
        if fn in ("floor", "rows_floor"):
            floor_cpu[fn] = floor_worker.cpu_s() - cpu0
            floor_used[fn] = cpu.cpu_seconds(fbefore, cpu.Snapshot.take(), floor_worker.pid)
        if fdone["statuses"]["succeeded"] != n:
            raise RuntimeError(f"pipeline: {fn} jobs failed: {fdone['statuses']}")
    rows_done = await seed.wait_jobs(pool, genq_jobs, timeout_s)
    if rows_done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"pipeline: rows floor left {rows_done['statuses']}")
    env.stop(floor_worker)
    floor_wall, grouped_wall = walls["floor"], walls["floor_grouped"]
    rows_wall = walls["rows_floor"]

    genq_us, floor_us = _per_job(genq_used, n), _per_job(floor_used["floor"], n)
    rows_us = _per_job(floor_used["rows_floor"], n)
    return [
        # The target: genq's worker against the floor of any worker that records each job
        # durably (one fsynced file and one UPDATE per job).
        Row("pipeline", "pipeline: genq vs worker floor (1 PG UPDATE + 1 fsync)", n / genq_wall,
            n / floor_wall, "jobs/s", limit=0.8, target=">= 0.8x floor",
            notes={"jobs": n, "genq_wall_s": genq_wall, "bare_wall_s": bare_wall,
                   "floor_wall_s": floor_wall, "genq_worker_cpu_s": genq_cpu,
                   "bare_worker_cpu_s": bare_cpu, "floor_worker_cpu_s": floor_cpu["floor"],
                   "rows_floor_wall_s": rows_wall,
                   "rows_floor_worker_cpu_s": floor_cpu["rows_floor"],
                   # CPU per job in microseconds, by component
                   "genq_cpu_us_per_job": genq_us,
                   "bare_cpu_us_per_job": _per_job(bare_used, n),
                   "floor_cpu_us_per_job": floor_us,
                   "rows_floor_cpu_us_per_job": rows_us,
                   # with pg_stat_statements (bench/pgstat.py): genq's top statements
                   **statements}),
        Row("pipeline", "pipeline: jobs/s through one worker vs bare arq", n / genq_wall,
            n / bare_wall, "jobs/s"),
        # The floor in the "genq" column: what any worker that records each job durably
        # reaches against bare arq.
        Row("pipeline", "pipeline floor (1 PG UPDATE + 1 fsync) vs bare arq", n / floor_wall,
            n / bare_wall, "jobs/s"),
        # The profile behind the throughput, from /proc.
        Row("pipeline", "pipeline: PostgreSQL CPU per job (claim + finalize) vs floor",
            genq_us["postgres"], floor_us["postgres"], "us", better="lower"),
        Row("pipeline", "pipeline: worker CPU per job vs floor", genq_us["server"],
            floor_us["server"], "us", better="lower"),
        Row("pipeline", "pipeline: machine CPU per job vs bare arq", genq_us["machine"],
            _per_job(bare_used, n)["machine"], "us", better="lower"),
        # What any worker that writes genq's rows and files reaches against the worker floor
        # (the target's baseline), and genq against it.
        Row("pipeline", "pipeline floor with genq's rows and files vs worker floor",
            n / rows_wall, n / floor_wall, "jobs/s"),
        Row("pipeline", "pipeline: genq vs the floor with genq's rows and files", n / genq_wall,
            n / rows_wall, "jobs/s"),
        Row("pipeline", "pipeline floor with genq's rows and files: PostgreSQL CPU per job vs "
            "worker floor", rows_us["postgres"], floor_us["postgres"], "us", better="lower"),
        Row("pipeline", "pipeline floor, group commit, vs bare arq", n / grouped_wall,
            n / bare_wall, "jobs/s"),
        Row("pipeline", "pipeline floor, file only, vs bare arq", n / walls["floor_file"],
            n / bare_wall, "jobs/s"),
        Row("pipeline", "pipeline floor, UPDATE only, vs bare arq", n / walls["floor_update"],
            n / bare_wall, "jobs/s"),
    ]
