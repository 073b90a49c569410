"""``POST /v1/jobs`` at 64 concurrent keep-alive connections against one ``genq api`` process,
against a bare Starlette handler under the same uvicorn settings and the same load generator,
and against the intake floor (the bare handler plus exactly one autocommit INSERT with a pool,
``bench/floor.py``): what any intake that must write to PostgreSQL per request can reach here.
Then against the floor with genq's rows (``rows_floor_app`` in ``bench/bare_app.py``): the bare
handler writing the rows genq writes for a job with plain group-committed SQL and queueing the
job on arq as genq does: what any intake that writes genq's rows can reach here. The scenario
checks that floor left a job, its hold and its ledger row for every job it queued, and every
account's balance equal to its ledger's sum.

Each connection submits as its own account (64 accounts, a billion credits each), so the
balance never runs out and accounts do not queue behind each other's row lock (the hot-account
scenario measures that). No worker runs: jobs pile up in the queue.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from typing import Any

from bench import cpu, loadgen, pgstat, seed
from bench.env import BenchEnv, Proc
from bench.report import Row

CONNECTIONS = 64
BODY = json.dumps({"model": "local/sketch", "prompt": "a lighthouse at dusk, benchmark",
                   "num_outputs": 1, "params": seed.TINY_PARAMS}).encode()


def plan(base_port: int, api_keys: list[str], duration_s: float) -> loadgen.Plan:
    """The load: one account per connection."""
    requests = [
        loadgen.http_request(
            "POST", "/v1/jobs", host=f"127.0.0.1:{base_port}", body=BODY,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ).decode("latin-1")
        for key in api_keys
    ]
    return loadgen.Plan(host="127.0.0.1", port=base_port, requests=requests,
                        connections=CONNECTIONS, duration_s=duration_s, warmup_s=1.0)


async def _measure(proc: Proc, load: loadgen.Plan) -> dict[str, Any]:
    before = cpu.Snapshot.take()
    result = await loadgen.in_process(load)
    cores = cpu.cores_used(before, cpu.Snapshot.take(), proc.pid)
    result["server_cpu_share"] = cores["server"]
    result["cores"] = cores
    # CPU per request, in microseconds, by component (the load generator is in "machine").
    result["cpu_us_per_request"] = {k: v / result["rps"] * 1e6 for k, v in cores.items()}
    bad = {k: v for k, v in result["statuses"].items() if k not in ("200", "202")}
    if bad or result["errors"]:
        raise RuntimeError(f"intake: unexpected answers {bad}, errors {result['errors']}")
    return result


# What the floor with genq's rows left since $1 for the accounts $2: its jobs, each job's open
# reservation and its one reserve ledger row, and the accounts whose balance or held credits
# are not their ledger's sums.
ROWS_FLOOR_LEFT = """
SELECT (SELECT count(*) FROM generation_jobs j
        WHERE j.user_id = ANY($2) AND j.created_at >= $1 AND j.status = 'queued') AS jobs,
       (SELECT count(*) FROM generation_jobs j
        JOIN credit_reservations r ON r.id = j.reservation_id AND r.status = 'open'
             AND r.amount = j.price_per_output
        JOIN credit_ledger l ON l.reservation_id = r.id AND l.kind = 'reserve'
        WHERE j.user_id = ANY($2) AND j.created_at >= $1) AS held,
       (SELECT count(*) FROM credit_accounts a
        CROSS JOIN LATERAL (
            SELECT sum(l.amount) AS balance, sum(l.reserved_delta) AS reserved
            FROM credit_ledger l WHERE l.user_id = a.user_id) s
        WHERE a.user_id = ANY($2)
          AND (a.balance, a.reserved) IS DISTINCT FROM (s.balance, s.reserved)) AS accounts_off
"""


async def _check_rows_floor(env: BenchEnv, since: datetime, users: list[uuid.UUID],
                            queue: str) -> None:
    """RuntimeError unless the floor with genq's rows queued every job it wrote, each with its
    hold, and kept every balance."""
    row = await env.db().fetchrow(ROWS_FLOOR_LEFT, since, users)
    queued = await env.r().zcard(queue)
    found = {**dict(row or {}), "queued": queued}
    if not queued or found != {"jobs": queued, "held": queued, "accounts_off": 0,
                               "queued": queued}:
        raise RuntimeError(f"intake: the floor with genq's rows left {found}")


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """genq, then the bare app, the two floors and the floor with genq's rows."""
    duration_s = 3.0 if quick else 10.0
    accounts = await seed.users(env.db(), CONNECTIONS, 10**9)
    keys = [a.api_key for a in accounts]

    api, base = await env.genq_api(env.queue("intake"))
    profile = pgstat.Profile(env.db())
    await profile.start()
    genq = await _measure(api, plan(int(base.rsplit(":", 1)[1]), keys, duration_s))
    # with pg_stat_statements: per measured request, the warm-up's statements included
    genq.update(await profile.notes(genq["requests"]))
    env.stop(api)

    app, base = await env.bare_app()
    bare = await _measure(app, plan(int(base.rsplit(":", 1)[1]), keys, duration_s))
    env.stop(app)

    app, base = await env.bare_app(floor=True)
    floor = await _measure(app, plan(int(base.rsplit(":", 1)[1]), keys, duration_s))
    env.stop(app)

    app, base = await env.bare_app(floor=True, group_commit=True)
    grouped = await _measure(app, plan(int(base.rsplit(":", 1)[1]), keys, duration_s))
    env.stop(app)

    since = await env.db().fetchval("SELECT clock_timestamp()")
    queue = env.queue("intake-rows")
    app, base = await env.bare_app(floor=True, group_commit=True, rows_queue=queue)
    rows_floor = await _measure(app, plan(int(base.rsplit(":", 1)[1]), keys, duration_s))
    env.stop(app)
    await _check_rows_floor(env, since, [a.id for a in accounts], queue)

    keep = ("requests", "client_cpu_share", "server_cpu_share", "cores", "cpu_us_per_request")
    notes = {
        "connections": CONNECTIONS, "duration_s": duration_s,
        "genq": {k: genq[k] for k in (*keep, "pg_stat_statements") if k in genq},
        "bare": {k: bare[k] for k in keep},
        "floor": {k: floor[k] for k in keep},
        "group_commit_floor": {k: grouped[k] for k in keep},
        "rows_floor": {k: rows_floor[k] for k in keep},
    }
    genq_us, bare_us = genq["cpu_us_per_request"], bare["cpu_us_per_request"]
    grouped_us, rows_us = grouped["cpu_us_per_request"], rows_floor["cpu_us_per_request"]
    return [
        # The target: genq's intake against the floor of any intake that writes each request
        # to PostgreSQL, with group commit (concurrent requests share one multi-row INSERT).
        Row("intake", "intake: genq vs group-commit floor, req/s", genq["rps"], grouped["rps"],
            "req/s", limit=0.6, target=">= 0.6x floor", notes=notes),
        Row("intake", "intake: POST /v1/jobs at 64 connections vs bare Starlette", genq["rps"],
            bare["rps"], "req/s"),
        Row("intake", "intake: p50 latency", genq["latency_ms"]["p50"],
            bare["latency_ms"]["p50"], "ms", better="lower"),
        Row("intake", "intake: p99 latency", genq["latency_ms"]["p99"],
            bare["latency_ms"]["p99"], "ms", better="lower"),
        # The floors in the "genq" column: what an intake that writes to PostgreSQL reaches.
        Row("intake", "intake floor (1 PG round trip) vs bare Starlette", floor["rps"],
            bare["rps"], "req/s"),
        Row("intake", "intake floor, group commit, vs bare Starlette", grouped["rps"],
            bare["rps"], "req/s"),
        # The proof: what any intake that writes genq's rows (and queues the job) reaches
        # against the target's floor, and how far genq is from it.
        Row("intake", "intake floor with genq's rows vs group-commit floor, req/s",
            rows_floor["rps"], grouped["rps"], "req/s"),
        Row("intake", "intake: genq vs the floor with genq's rows, req/s", genq["rps"],
            rows_floor["rps"], "req/s"),
        Row("intake", "intake floor with genq's rows: PostgreSQL CPU per request vs "
            "group-commit floor", rows_us["postgres"], grouped_us["postgres"], "us",
            better="lower"),
        Row("intake", "intake floor with genq's rows: machine CPU per request vs group-commit "
            "floor", rows_us["machine"], grouped_us["machine"], "us", better="lower"),
        # The target's rate (0.6x the group-commit floor's) at that floor's CPU per request,
        # in cores, against the machine's: over 1x, no intake writing genq's rows reaches the
        # target here however well it used the cores (the CPU per request at the floor's best).
        Row("intake", "intake floor with genq's rows: cores needed at 0.6x the group-commit "
            "floor vs the machine's", 0.6 * grouped["rps"] * rows_us["machine"] / 1e6,
            float(os.cpu_count() or 1), "cores", better="lower"),
        # The profile behind the throughput, from /proc.
        Row("intake", "intake: PostgreSQL CPU per request (submit) vs group-commit floor",
            genq_us["postgres"], grouped_us["postgres"], "us", better="lower"),
        Row("intake", "intake: API CPU per request vs group-commit floor", genq_us["server"],
            grouped_us["server"], "us", better="lower"),
        Row("intake", "intake: machine CPU per request vs bare Starlette", genq_us["machine"],
            bare_us["machine"], "us", better="lower"),
    ]
