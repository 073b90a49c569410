"""The per-user running cap (``GENQ_USER_MAX_RUNNING``), applied where jobs enter the queue.

PostgreSQL stays the source of truth and gates what reaches Redis: a job is *dispatched* (put
on arq's queue) only while its user has fewer than the cap of dispatched and unfinished jobs
(``genq_dispatch``, exact under any concurrency: it counts and marks under a lock on the user).
The rest wait in PostgreSQL, queued with ``enqueued_at`` NULL, invisible to the workers and to
Redis, so a user with thousands waiting costs nothing while they wait. Jobs are dispatched
when submitted under the cap (the intake), when one of the user's jobs finishes (the worker,
after its final write) and by the scheduler's frequent sweep (repair after a crash).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.db import Pool
from shared.logging import get_logger
from shared.queue import enqueue_generations
from sql import queries

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = get_logger(__name__)

# Redis is the transport only: a dispatch whose enqueue does not answer quickly is undone and
# tried again by the next one.
ENQUEUE_TIMEOUT_S = 2.0
_ENQUEUE_ERRORS = (RedisError, OSError, TimeoutError)


async def dispatch(
    pool: Pool, redis: ArqRedis, queue_name: str, user_ids: Sequence[uuid.UUID], cap: int
) -> dict[uuid.UUID, datetime]:
    """Dispatch the oldest waiting jobs of ``user_ids``, as many as ``cap`` leaves room for;
    returns the dispatched jobs with their ``enqueued_at``. If Redis cannot take them they wait
    again (empty result)."""
    rows = await pool.fetch(queries["dispatch_jobs"], list(dict.fromkeys(user_ids)), cap)
    if not rows:
        return {}
    ids = [r["job_id"] for r in rows]
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await enqueue_generations(redis, queue_name, ids,
                                      [r["priority_tier"] for r in rows])
    except _ENQUEUE_ERRORS as exc:
        log.warning("dispatch_enqueue_failed", jobs=len(ids), error=repr(exc))
        await pool.execute(queries["undispatch_jobs"], ids)
        return {}
    return {r["job_id"]: r["enqueued_at"] for r in rows}
