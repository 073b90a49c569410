"""The per-user running cap (``GENQ_USER_MAX_RUNNING``), applied where jobs enter the queue.

PostgreSQL stays the source of truth and gates what reaches Redis: a job is *dispatched* (put
on arq's queue) only while its user has fewer than the cap of dispatched and unfinished jobs
(``genq_dispatch``, exact under any concurrency: it counts and marks under a lock on the user).
The rest wait in PostgreSQL, queued with ``enqueued_at`` NULL, invisible to the workers and to
Redis, so a user with thousands waiting costs nothing while they wait. Jobs are dispatched
when submitted under the cap (the intake), when one of the user's jobs finishes (the worker,
after its final write) and by the scheduler's frequent sweep (repair after a crash).

**The waiting mark.** Most finished jobs belong to users with nothing waiting, and a dispatch
for them would be a statement that finds nothing. So whoever leaves a user's jobs waiting
marks the user in Redis (:func:`dispatch`), and a worker runs a dispatch after a finish only
for marked users (:func:`dispatch_after_finish`), clearing the mark once nothing waits. No
waiting job is left behind by a finish that skipped its dispatch: the finish's final write
commits before it reads the mark; if that read came before the mark was made, the marker
dispatches once more after marking (its "second look", which sees that finish and the place
it freed). A mark that already existed needs no second look: whoever made it looked again
after making it, and a finish that read it after that dispatched itself. A mark is a counter,
cleared only if nobody marked again since the finish read it. If Redis loses the marks, the
scheduler's sweep dispatches the waiting users within seconds and marks them again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.db import Pool
from shared.limits import run_script
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


# A user's waiting mark outlives any gap between a job left waiting and the next finish; the
# sweep marks users with jobs waiting again on every run.
WAITING_MARK_TTL_MS = 24 * 3600 * 1000

# Clear the marks nobody changed since they were read. KEYS: the marks; ARGV: the values read.
# Returns {how many were cleared}.
CLEAR_MARKS_LUA = """
local cleared = 0
for i, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[i] then
        cleared = cleared + redis.call('DEL', key)
    end
end
return {cleared}
"""


def waiting_mark(queue_name: str, user_id: uuid.UUID) -> str:
    """The Redis key that says ``user_id`` may have jobs waiting for a dispatch."""
    return f"{queue_name}:waiting:{user_id}"


async def _dispatch_once(
    pool: Pool, redis: ArqRedis, queue_name: str, user_ids: Sequence[uuid.UUID], cap: int
) -> tuple[dict[uuid.UUID, datetime], list[uuid.UUID]] | None:
    """One ``genq_dispatch`` and the enqueue of what it dispatched: the dispatched jobs and
    the users with jobs still waiting; None if Redis could not take the jobs (they wait
    again)."""
    rows = await pool.fetch(queries["dispatch_jobs"], list(dict.fromkeys(user_ids)), cap)
    jobs = [r for r in rows if r["job_id"] is not None]
    waiting = [r["user_id"] for r in rows if r["job_id"] is None]
    if jobs:
        ids = [r["job_id"] for r in jobs]
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                await enqueue_generations(redis, queue_name, ids,
                                          [r["priority_tier"] for r in jobs])
        except _ENQUEUE_ERRORS as exc:
            log.warning("dispatch_enqueue_failed", jobs=len(ids), error=repr(exc))
            await pool.execute(queries["undispatch_jobs"], ids)
            return None
    return {r["job_id"]: r["enqueued_at"] for r in jobs}, waiting


async def dispatch(
    pool: Pool, redis: ArqRedis, queue_name: str, user_ids: Sequence[uuid.UUID], cap: int
) -> dict[uuid.UUID, datetime]:
    """Dispatch the oldest waiting jobs of ``user_ids``, as many as ``cap`` leaves room for;
    returns the dispatched jobs with their ``enqueued_at``. Users left with jobs waiting are
    marked (and looked at once more if their mark is new). If Redis cannot take the jobs they
    wait again (empty result), for the sweep."""
    first = await _dispatch_once(pool, redis, queue_name, user_ids, cap)
    if first is None:
        return {}
    done, waiting = first
    if not waiting:
        return done
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            pipe = redis.pipeline(transaction=False)
            for user in waiting:
                pipe.incr(waiting_mark(queue_name, user))
                pipe.pexpire(waiting_mark(queue_name, user), WAITING_MARK_TTL_MS)
            marks = (await pipe.execute())[::2]
    except _ENQUEUE_ERRORS as exc:
        log.warning("dispatch_mark_failed", users=len(waiting), error=repr(exc))
        return done
    new = [user for user, mark in zip(waiting, marks, strict=True) if int(mark) == 1]
    if new:
        second = await _dispatch_once(pool, redis, queue_name, new, cap)
        if second is not None:
            done.update(second[0])
    return done


async def dispatch_after_finish(
    pool: Pool, redis: ArqRedis, queue_name: str, user_ids: Sequence[uuid.UUID], cap: int
) -> dict[uuid.UUID, datetime]:
    """After jobs of ``user_ids`` finished (their final writes committed): dispatch for the
    users marked as having jobs waiting, and clear the marks of those left with none. One
    Redis round trip, and no statement, when none is marked."""
    users = list(dict.fromkeys(user_ids))
    keys = [waiting_mark(queue_name, user) for user in users]
    marks = await redis.mget(keys)
    marked = {user: mark for user, mark in zip(users, marks, strict=True) if mark is not None}
    if not marked:
        return {}
    found = await _dispatch_once(pool, redis, queue_name, list(marked), cap)
    if found is None:
        return {}
    done, waiting = found
    clear = [user for user in marked if user not in set(waiting)]
    if clear:
        await run_script(redis, CLEAR_MARKS_LUA, [waiting_mark(queue_name, u) for u in clear],
                         [marked[u] for u in clear])
    return done
