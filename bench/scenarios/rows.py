"""PostgreSQL CPU per job in one harness, stage by stage: genq's own statements against the same
rows written with the plainest SQL, and against the floors' statements.

The combined row of a full run (intake's submit plus the pipeline's claim and final write,
against the two floors') sets the target: at most 3x the floors' PostgreSQL CPU. This scenario
asks what any statements that write genq's rows can reach, with no HTTP, no worker and no
queue: the harness itself sends each side's statements, on ``CONNECTIONS`` connections held for
the whole run (no reset on release), in batches of 4 jobs and then of 32 (``BATCHES``), each
connection with accounts of its own (so no side waits on another connection's account lock),
one stage at a time for a wave of 64 jobs (``IN_FLIGHT``; 128 in batches of 32), then the
next wave:

- **genq**: the intake's ``submit_jobs``, the worker's ``claim_jobs``, one
  ``count_output_staged`` per job and ``finalize_jobs`` with one stored output and its
  thumbnail, as the worker sends them;
- **plain**: the same rows with one plain data-modifying statement per batch and stage, no
  PL/pgSQL and no decision (``PLAIN_SUBMIT``, ``PLAIN_CLAIM`` and ``PLAIN_FINALIZE`` in
  ``bench/floor.py``; the count is genq's own, already one ``UPDATE``): the job row, its
  reservation and its hold's ledger row and one account update per account; the claim's
  update; the job's outputs count; the asset and variant rows, the reservation's capture, its
  ledger row, the account update and the job's final update. The job-event triggers write
  their rows as they do for genq;
- **plain, no events**: the same with the job-event triggers disabled;
- **hold on the job**: the plain side without the reservation row (the issue's question whether
  the job row can carry the hold): the hold is the job's price and its ledger rows;
- **floors**: the group-commit intake floor's multi-row ``INSERT`` of a batch, and the worker
  floor's autocommit ``UPDATE`` per job (``bench/floor.py``), the two statements the combined
  row's floors send.

After each side but the floors, the scenario checks that it left the rows it should
(``CHECK_ROWS``) and fails otherwise. PostgreSQL's CPU comes from ``/proc`` (``bench/cpu.py``),
every process of the run's server, autovacuum included; the tables are vacuumed before each
side. Each side runs ``rounds`` times, the sides in a rotating order; the median per job is
reported. If the plain rows alone cost more than 3x the floors, no statement design reaches the
combined target while a job writes these rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench import cpu, floor, seed
from bench.env import BenchEnv
from bench.report import Row
from bench.scenarios.events import set_event_triggers
from shared.db import Connection, Pool
from sql import queries

# Jobs per statement: 4, about what the intake's and the worker's batches hold under load, and
# 32, the intake's largest.
BATCHES = (4, 32)
CONNECTIONS = 4
ACCOUNTS_PER_CONNECTION = 4
STAGES = ("submit", "claim", "count", "finalize")
# Jobs taken through the stages together (a wave: as many batches per connection as make this
# many, at least one): about as many queued or running at once as one worker holds
# (GENQ_MAX_JOBS, 100 by default), so no statement works among more queued or running jobs
# than a pipeline's.
IN_FLIGHT = 64
VACUUM = ("VACUUM ANALYZE generation_jobs, credit_reservations, credit_ledger, credit_accounts, "
          "workspace_assets, asset_variants, job_events, " + floor.TABLE)

# What the jobs $1 of the accounts $2 left: the same for every side but the floors, so the sides
# compare the same rows: every job succeeded with one output, its hold captured in full, two
# ledger rows, one asset with one variant, its events; and every account's balance and held
# credits are its ledger's sums, its newest entry's balance_after its balance.
CHECK_ROWS = """
SELECT (SELECT count(*) FROM generation_jobs j
        WHERE j.id = ANY($1) AND j.status = 'succeeded' AND j.outputs_made = 1) AS succeeded,
       (SELECT count(*) FROM credit_reservations r
        WHERE r.job_id = ANY($1) AND r.status = 'captured' AND r.captured = r.amount
       ) AS captured,
       (SELECT count(*) FROM credit_ledger l WHERE l.job_id = ANY($1)) AS ledger_rows,
       (SELECT count(*) FROM workspace_assets a WHERE a.job_id = ANY($1)) AS assets,
       (SELECT count(*) FROM asset_variants v JOIN workspace_assets a ON a.id = v.asset_id
        WHERE a.job_id = ANY($1)) AS variants,
       (SELECT count(*) FROM job_events e WHERE e.job_id = ANY($1)) AS events,
       (SELECT count(*) FROM credit_accounts a
        CROSS JOIN LATERAL (
            SELECT sum(l.amount) AS balance, sum(l.reserved_delta) AS reserved,
                   (array_agg(l.balance_after ORDER BY l.id DESC))[1] AS newest
            FROM credit_ledger l WHERE l.user_id = a.user_id) s
        WHERE a.user_id = ANY($2)
          AND (a.balance, a.reserved, a.balance)
              IS DISTINCT FROM (s.balance, s.reserved, s.newest)) AS accounts_off
"""

# The issue's question "does a reservation need its own table when the job row can carry the
# hold?": PLAIN_SUBMIT and PLAIN_FINALIZE with no credit_reservations row, the hold being the
# job's price and its ledger rows (reservation_id NULL). Same arguments, but $3 is unused.
HOLD_ON_JOB_SUBMIT = f"""
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $4::text[], $5::text[], $6::bigint[],
                         $7::bigint[])
        WITH ORDINALITY AS i(job, user_id, prompt, params, seed, price, n)
    WHERE $3::uuid[] IS NOT NULL AND $10::float8 IS NOT NULL
), {floor.HOLD_ACCOUNTS}, led AS (
    INSERT INTO credit_ledger (user_id, kind, amount, reserved_delta, balance_after, job_id)
    SELECT i.user_id, 'reserve', -i.price, i.price,
           {floor.BALANCE_AFTER},
           i.job
    FROM i JOIN acc ON acc.user_id = i.user_id
    ORDER BY i.n
)
INSERT INTO generation_jobs
    (id, user_id, model, provider, prompt, num_outputs, params, seed, price_per_output,
     max_attempts)
SELECT job, user_id, $8, $9, prompt, 1, params::jsonb, seed, price, 3 FROM i
"""

HOLD_ON_JOB_FINALIZE = floor.FINAL_WRITE_JOBS_AND_ASSETS + """), acc AS (
    UPDATE credit_accounts c SET reserved = c.reserved - t.amount, updated_at = now()
    FROM (SELECT user_id, sum(price_per_output) AS amount FROM j GROUP BY user_id) t
    WHERE c.user_id = t.user_id
    RETURNING c.user_id, c.balance
)
INSERT INTO credit_ledger (user_id, kind, amount, reserved_delta, balance_after, job_id)
SELECT j.user_id, 'capture', 0, -j.price_per_output, acc.balance, j.id
FROM j JOIN acc ON acc.user_id = j.user_id
ORDER BY j.user_id, j.id
"""

Batch = list[dict[str, Any]]
# One stage of one side: what a connection sends for one batch of jobs.
Stage = Callable[[Connection, Batch], Awaitable[None]]


def _keys(batch: Batch) -> tuple[list[str], list[str]]:
    """The storage keys of each job's output and thumbnail (the rows only; no file)."""
    return ([f"{b['user_id']}/{b['job']}/0.png" for b in batch],
            [f"{b['user_id']}/{b['job']}/0.thumb.webp" for b in batch])


def _claim(statement: str) -> Stage:
    """Claim the batch's jobs with ``statement`` (ids, lease owner, lease seconds)."""
    async def claim(conn: Connection, batch: Batch) -> None:
        claimed = await conn.fetch(statement, [uuid.UUID(b["job"]) for b in batch],
                                   "bench-rows", 60.0)
        if len(claimed) != len(batch):
            raise RuntimeError(f"rows: claimed {len(claimed)} of {len(batch)}")
    return claim


async def _count(conn: Connection, batch: Batch) -> None:
    for b in batch:
        if await conn.fetchval(queries["count_output_staged"], uuid.UUID(b["job"]), 1) != 1:
            raise RuntimeError(f"rows: job {b['job']} was not counted")


async def _genq_finalize(conn: Connection, batch: Batch) -> None:
    outputs, thumbs = _keys(batch)
    items = [{"item": i, "job": b["job"], "user_id": b["user_id"], "attempt": 1,
              "status": "succeeded", "made": 1, "error_code": None, "error_message": None,
              "assets": [{"asset_index": 0, "asset_type": "image", "storage_key": outputs[i],
                          "file_size_bytes": 70, "mime_type": "image/png",
                          "duration_seconds": None, "width": 1, "height": 1, "fps": None,
                          "variants": [{"kind": "thumb", "mime_type": "image/webp",
                                        "width": 1, "height": 1, "file_size_bytes": 40,
                                        "storage_key": thumbs[i]}]}]}
             for i, b in enumerate(batch)]
    written = await conn.fetch(queries["finalize_jobs"], items, 86400.0)
    if [w["status"] for w in written] != ["succeeded"] * len(batch):
        raise RuntimeError(f"rows: final write gave {[w['status'] for w in written]}")


def _plain_submit(provider: str, statement: str = floor.PLAIN_SUBMIT) -> Stage:
    async def submit(conn: Connection, batch: Batch) -> None:
        await conn.execute(
            statement, [uuid.UUID(b["job"]) for b in batch],
            [uuid.UUID(b["user_id"]) for b in batch], [uuid.uuid4() for _ in batch],
            [b["prompt"] for b in batch], [json.dumps(b["params"]) for b in batch],
            [b["seed"] for b in batch], [b["price_per_output"] for b in batch],
            batch[0]["model"], provider, 86400.0)
    return submit


def _plain_finalize(statement: str = floor.PLAIN_FINALIZE) -> Stage:
    async def finalize(conn: Connection, batch: Batch) -> None:
        outputs, thumbs = _keys(batch)
        await conn.execute(statement, [uuid.UUID(b["job"]) for b in batch], outputs, thumbs,
                           86400.0)
    return finalize


async def _floor_submit(conn: Connection, batch: Batch) -> None:
    await conn.execute(floor.INSERT_ROWS, [uuid.UUID(b["job"]) for b in batch],
                       [b["prompt"] for b in batch])


async def _floor_finish(conn: Connection, batch: Batch) -> None:
    for b in batch:
        await conn.execute(floor.MARK_DONE, uuid.UUID(b["job"]))


async def _nothing(conn: Connection, batch: Batch) -> None:
    """The floors have no stage here."""


async def _side(conns: Sequence[Connection], batches: list[list[Batch]],
                stages: dict[str, Stage], wave_size: int) -> dict[str, float]:
    """Every connection's batches, ``wave_size`` at a time: each stage for every batch of the
    wave (every connection its own batches in turn), then the next stage. PostgreSQL CPU
    seconds by stage, summed over the waves."""
    used = dict.fromkeys(STAGES, 0.0)
    for start in range(0, max(len(mine) for mine in batches), wave_size):
        wave = [mine[start:start + wave_size] for mine in batches]
        for name in STAGES:
            stage = stages[name]

            async def run(conn: Connection, mine: list[Batch], stage: Stage = stage) -> None:
                for batch in mine:
                    await stage(conn, batch)

            before = cpu.Snapshot.take()
            await asyncio.gather(*(run(c, b) for c, b in zip(conns, wave, strict=True)))
            used[name] += cpu.cpu_seconds(before, cpu.Snapshot.take(), os.getpid())["postgres"]
    return used


async def _check(pool: Pool, batches: list[list[Batch]], accounts: list[list[uuid.UUID]],
                 *, events: bool, reservations: bool) -> None:
    """RuntimeError unless the side left the rows :data:`CHECK_ROWS` expects."""
    jobs = [uuid.UUID(b["job"]) for mine in batches for batch in mine for b in batch]
    n = len(jobs)
    row = await pool.fetchrow(CHECK_ROWS, jobs, [u for users in accounts for u in users])
    found = dict(row) if row is not None else {}
    expected = {"succeeded": n, "captured": n if reservations else 0, "ledger_rows": 2 * n,
                "assets": n, "variants": n, "events": 4 * n if events else 0,
                "accounts_off": 0}
    if found != expected:
        raise RuntimeError(f"rows: the side left {found}, not {expected}")


async def _measure(pool: Pool, conns: Sequence[Connection], accounts: list[list[uuid.UUID]],
                   sides: dict[str, dict[str, Stage]], n: int, rounds: int, batch: int,
                   ) -> dict[str, list[dict[str, float]]]:
    """Every side ``rounds`` times in a rotating order, in batches of ``batch``: PostgreSQL
    CPU per job by stage, in microseconds, a dict per round."""
    wave = max(1, IN_FLIGHT // (CONNECTIONS * batch))
    per_job: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for r in range(rounds):
        names = list(sides)
        for name in names[r % len(names):] + names[:r % len(names)]:
            batches = [await seed.submit_batches(pool, users, n // CONNECTIONS,
                                                 seed.TINY_PARAMS, batch=batch)
                       for users in accounts]
            # Each side starts with the dead rows of the one before it vacuumed, so
            # autovacuum during a side is mostly that side's own.
            await pool.execute(VACUUM)
            if name == "plain_no_events":
                await set_event_triggers(pool, False)
            try:
                used = await _side(conns, batches, sides[name], wave)
            finally:
                if name == "plain_no_events":
                    await set_event_triggers(pool, True)
            done = sum(len(b) for mine in batches for b in mine)
            if name != "floor":
                await _check(pool, batches, accounts, events=name != "plain_no_events",
                             reservations=name != "hold_on_job")
            per_job[name].append({k: v / done * 1e6 for k, v in used.items()})
    return per_job


def _rows(batch: int, per_job: dict[str, list[dict[str, float]]], notes: dict[str, Any]
          ) -> list[Row]:
    def median(name: str) -> dict[str, float]:
        stages = {s: statistics.median(run[s] for run in per_job[name]) for s in STAGES}
        return {**stages, "total": statistics.median(sum(run.values()) for run in per_job[name])}

    us = {name: median(name) for name in per_job}
    head = f"PostgreSQL CPU per job, one harness, batches of {batch}:"
    floors = us["floor"]["total"]
    return [
        Row("rows", f"{head} genq's statements vs the floors'", us["genq"]["total"], floors,
            "us", better="lower", limit=3.0, target="<= 3x the floors'",
            notes={**notes, "batch": batch, "postgres_cpu_us_per_job": us,
                   "per_round": per_job}),
        # The proof: what any statements that write genq's rows reach against the floors.
        Row("rows", f"{head} genq's rows in plain SQL vs the floors'", us["plain"]["total"],
            floors, "us", better="lower"),
        Row("rows", f"{head} genq's rows in plain SQL, no job events, vs the floors'",
            us["plain_no_events"]["total"], floors, "us", better="lower"),
        Row("rows", f"{head} genq's rows in plain SQL, the hold on the job (no reservation "
            "row), vs the floors'", us["hold_on_job"]["total"], floors, "us", better="lower"),
        Row("rows", f"{head} genq's statements vs its rows in plain SQL", us["genq"]["total"],
            us["plain"]["total"], "us", better="lower"),
    ]


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """Every side in batches of each size of ``BATCHES`` (the first alone when quick)."""
    n = 400 if quick else 4000
    rounds = 1 if quick else 3
    pool = env.db()
    await pool.execute(floor.CREATE_TABLE)
    provider = await pool.fetchval("SELECT provider FROM models WHERE key = 'local/sketch'")
    accounts = [[u.id for u in await seed.users(pool, ACCOUNTS_PER_CONNECTION, 10**9)]
                for _ in range(CONNECTIONS)]
    sides: dict[str, dict[str, Stage]] = {
        "genq": {"submit": seed.submit, "claim": _claim(queries["claim_jobs"]),
                 "count": _count, "finalize": _genq_finalize},
        "plain": {"submit": _plain_submit(provider), "claim": _claim(floor.PLAIN_CLAIM),
                  "count": _count, "finalize": _plain_finalize()},
        "hold_on_job": {"submit": _plain_submit(provider, HOLD_ON_JOB_SUBMIT),
                        "claim": _claim(floor.PLAIN_CLAIM), "count": _count,
                        "finalize": _plain_finalize(HOLD_ON_JOB_FINALIZE)},
        "floor": {"submit": _floor_submit, "claim": _nothing, "count": _nothing,
                  "finalize": _floor_finish},
    }
    sides["plain_no_events"] = sides["plain"]
    notes = {"jobs": n, "rounds": rounds, "connections": CONNECTIONS}
    rows: list[Row] = []
    conns = [await pool.acquire() for _ in range(CONNECTIONS)]
    try:
        for batch in BATCHES[:1] if quick else BATCHES:
            per_job = await _measure(pool, conns, accounts, sides, n, rounds, batch)
            rows.extend(_rows(batch, per_job, notes))
    finally:
        for conn in conns:
            await pool.release(conn)
    return rows
