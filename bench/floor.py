"""The floors: what any design that writes to PostgreSQL (and durable storage) once per job
can reach on this machine, with nothing of genq in it.

- intake floor: a bare Starlette handler that does exactly one asyncpg round trip per request
  (one autocommit INSERT of the request body), served like the bare app.
- worker floor: a bare arq function that writes and fsyncs one small file and then does one
  autocommit UPDATE per job.

Both use a pool whose connections are not reset on release, so a request or job costs exactly
one round trip (asyncpg's default reset is a second one).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.batch import Batcher

TABLE = "bench_floor"

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id          uuid PRIMARY KEY,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz
)
"""
INSERT_ROW = f"INSERT INTO {TABLE} (id, body) VALUES ($1, $2)"
MARK_DONE = f"UPDATE {TABLE} SET done_at = now() WHERE id = $1"
INSERT_ROWS = f"INSERT INTO {TABLE} (id, body) SELECT * FROM unnest($1::uuid[], $2::text[])"
MARK_DONE_MANY = f"UPDATE {TABLE} SET done_at = now() WHERE id = ANY($1::uuid[])"

# genq's rows written with the plainest SQL, no PL/pgSQL and no decision: the rows scenario's
# plain side (bench/scenarios/rows.py) and the pipeline's floor with genq's rows
# (bench/bare_arq.py's rows_floor) claim and finalize genq's jobs with them.
# $1 job ids, $2 lease owner, $3 lease seconds.
PLAIN_CLAIM = """
UPDATE generation_jobs
SET status = 'running', attempt = attempt + 1, lease_owner = $2,
    lease_expires_at = now() + make_interval(secs => $3), started_at = now(),
    outputs_staged = 0, updated_at = now()
WHERE id = ANY($1::uuid[]) AND status = 'queued'
RETURNING id, attempt
"""

# The first half of a final write (PLAIN_FINALIZE, and the rows scenario's with the hold on the
# job): the jobs' last update and their asset and variant rows. $1 job ids, $2 output storage
# keys, $3 thumbnail storage keys, $4 asset TTL seconds: each job succeeded with one 1x1 PNG and
# its thumbnail.
FINAL_WRITE_JOBS_AND_ASSETS = """
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS i(job, storage_key, thumb_key)
), j AS (
    UPDATE generation_jobs j
    SET status = 'succeeded', outputs_made = 1, finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    FROM i WHERE j.id = i.job AND j.status = 'running'
    RETURNING j.id, j.user_id, j.reservation_id, j.price_per_output, j.seed, j.prompt,
              j.model, j.params
), a AS (
    INSERT INTO workspace_assets
        (user_id, job_id, asset_index, asset_type, storage_key, file_size_bytes, mime_type,
         width, height, generation_seed, original_prompt, model_used, generation_settings,
         created_at, expires_at)
    SELECT j.user_id, j.id, 0, 'image', i.storage_key, 70, 'image/png', 1, 1, j.seed,
           j.prompt, j.model, j.params, now(), now() + make_interval(secs => $4)
    FROM j JOIN i ON i.job = j.id
    RETURNING id, job_id
), v AS (
    INSERT INTO asset_variants
        (asset_id, kind, mime_type, width, height, file_size_bytes, storage_key)
    SELECT a.id, 'thumb', 'image/webp', 1, 1, 40, i.thumb_key FROM a JOIN i ON i.job = a.job_id
"""

# A final write: FINAL_WRITE_JOBS_AND_ASSETS, then each job's hold captured in full.
PLAIN_FINALIZE = FINAL_WRITE_JOBS_AND_ASSETS + """), r AS (
    UPDATE credit_reservations r
    SET status = 'captured', captured = r.amount, refunded = 0, settled_at = now()
    FROM j WHERE r.id = j.reservation_id AND r.status = 'open'
    RETURNING r.id, r.user_id, r.job_id, r.amount
), acc AS (
    UPDATE credit_accounts c SET reserved = c.reserved - t.amount, updated_at = now()
    FROM (SELECT user_id, sum(amount) AS amount FROM r GROUP BY user_id) t
    WHERE c.user_id = t.user_id
    RETURNING c.user_id, c.balance
)
INSERT INTO credit_ledger
    (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id)
SELECT r.user_id, 'capture', 0, -r.amount, acc.balance, r.id, r.job_id
FROM r JOIN acc ON acc.user_id = r.user_id
ORDER BY r.user_id, r.job_id
"""


def group_commit(pool: Any, statement: str, *constants: Any,
                 max_batch: int = 64) -> Batcher[tuple[Any, ...], None]:
    """Concurrent calls share one execution of ``statement`` (one array per argument
    position, then ``constants``), with genq's own group commit (``shared/batch.py``)."""

    async def flush(calls: list[tuple[Any, ...]]) -> list[None]:
        columns = [list(col) for col in zip(*calls, strict=True)]
        await pool.execute(statement, *columns, *constants)
        return [None] * len(calls)

    return Batcher(flush, max_batch=max_batch, max_flushes=2)


async def _no_reset(conn: Any) -> None:
    """Nothing: the floors keep no session state, so there is nothing to reset."""


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool[asyncpg.Record]:
    """A pool of ``max_size`` connections that costs no round trip on release."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=max_size, reset=_no_reset)
    assert pool is not None
    return pool
