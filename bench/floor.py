"""The floors: what any design that writes to PostgreSQL (and durable storage) once per job
can reach on this machine, with nothing of genq in it.

- intake floor: a bare Starlette handler that does exactly one asyncpg round trip per request
  (one autocommit INSERT of the request body), served like the bare app.
- worker floor: a bare arq function that writes and fsyncs one small file and then does one
  autocommit UPDATE per job.

Both use a pool whose connections are not reset on release, so a request or job costs exactly
one round trip (asyncpg's default reset is a second one).

The floors with genq's rows ask what any design that writes the rows genq writes can reach:
the plain statements below (``PLAIN_SUBMIT``, ``PLAIN_CLAIM``, ``PLAIN_FINALIZE``) write them
with no PL/pgSQL and no decision, group-committed, in the intake's (``bench/bare_app.py``), the
worker's (``rows_floor`` in ``bench/bare_arq.py``) and the rows scenario's
(``bench/scenarios/rows.py``) floors.
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

# Both submits' account updates, one per account of the batch, and each hold's balance_after
# as genq writes it: the account's balance after that item, in item order.
HOLD_ACCOUNTS = """acc AS (
    UPDATE credit_accounts a
    SET balance = a.balance - t.total, reserved = a.reserved + t.total, updated_at = now()
    FROM (SELECT user_id, sum(price) AS total FROM i GROUP BY user_id) t
    WHERE a.user_id = t.user_id
    RETURNING a.user_id, a.balance
)"""
BALANCE_AFTER = """acc.balance + coalesce(sum(i.price) OVER (
               PARTITION BY i.user_id ORDER BY i.n DESC
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)"""

# $1 job ids, $2 users, $3 reservation ids, $4 prompts, $5 params (JSON text), $6 seeds,
# $7 prices, $8 model, $9 provider, $10 reservation TTL seconds.
PLAIN_SUBMIT = f"""
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                         $6::bigint[], $7::bigint[])
        WITH ORDINALITY AS i(job, user_id, reservation, prompt, params, seed, price, n)
), {HOLD_ACCOUNTS}, res AS (
    INSERT INTO credit_reservations (id, user_id, job_id, amount, expires_at)
    SELECT reservation, user_id, job, price, now() + make_interval(secs => $10) FROM i
), led AS (
    INSERT INTO credit_ledger
        (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id)
    SELECT i.user_id, 'reserve', -i.price, i.price,
           {BALANCE_AFTER},
           i.reservation, i.job
    FROM i JOIN acc ON acc.user_id = i.user_id
    ORDER BY i.n
)
INSERT INTO generation_jobs
    (id, user_id, model, provider, prompt, num_outputs, params, seed, price_per_output,
     reservation_id, max_attempts)
SELECT job, user_id, $8, $9, prompt, 1, params::jsonb, seed, price, reservation, 3 FROM i
"""

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
