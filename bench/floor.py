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


def group_commit(pool: Any, statement: str, max_batch: int = 64) -> Batcher[tuple[Any, ...], None]:
    """Concurrent calls share one execution of ``statement`` (one array per argument
    position), with genq's own group commit (``shared/batch.py``)."""

    async def flush(calls: list[tuple[Any, ...]]) -> list[None]:
        columns = [list(col) for col in zip(*calls, strict=True)]
        await pool.execute(statement, *columns)
        return [None] * len(calls)

    return Batcher(flush, max_batch=max_batch, max_flushes=2)


async def _no_reset(conn: Any) -> None:
    """Nothing: the floors keep no session state, so there is nothing to reset."""


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool[asyncpg.Record]:
    """A pool of ``max_size`` connections that costs no round trip on release."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=max_size, reset=_no_reset)
    assert pool is not None
    return pool
