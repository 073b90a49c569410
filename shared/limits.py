"""Rate and concurrency limits shared by every genq process, kept in Redis.

Each limit is one Lua script, so it is atomic however many API processes and workers share the
Redis, and each reads the clock from Redis (``TIME``), so machines whose clocks disagree still
count the same windows:

- :func:`check_submit_rate`: a user's submissions per minute at the intake, one round trip;
- :class:`ModelLimits`: a model's ``max_per_minute``, and its ``max_concurrency`` (a semaphore
  of leases that expire, so the place of a worker killed with SIGKILL comes back by itself).

A per-minute limit is a sliding log (a sorted set of the last 60 s of admitted calls): at most
that many in *any* 60 s window, never a burst of twice the rate across a window edge as a fixed
window or a token bucket allows. Keys live under the queue name, so deployments (and tests)
sharing one Redis do not mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shared.batch import Batcher
from shared.logging import get_logger

log = get_logger(__name__)

# How long a waiting worker sleeps at most between two looks at a full semaphore.
MAX_WAIT_STEP_S = 1.0
MIN_WAIT_STEP_S = 0.02

# Calls in the last window (a sorted set scored by the call's time). KEYS: the log.
# ARGV: the limit, a unique member, the window (ms). Returns {1, 0} when this call may go now
# (and records it), {0, ms until the oldest call leaves the window} otherwise.
SLIDING_LOG_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
local limit = tonumber(ARGV[1])
if redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now_ms, ARGV[2])
    redis.call('PEXPIRE', KEYS[1], window + 1000)
    return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now_ms + 1}
"""
RATE_WINDOW_MS = 60_000
# A model's calls are spaced by one more second than the provider's minute: a call admitted
# here reaches the provider a little later, and those delays differ from call to call, so an
# exact 60 s here could still put one call too many into some 60 s of the provider's.
PROVIDER_WINDOW_MS = RATE_WINDOW_MS + 1_000

# A semaphore of expiring leases (a sorted set: member = lease, score = its expiry in ms).
# KEYS: the set. ARGV: the limit, the lease, its length in ms. Returns {1, 0} when the lease
# is held (taken or renewed), {0, ms until the first lease expires} otherwise.
SEMAPHORE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or
        redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
    return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now_ms}
"""


# A model's place, all or nothing in one round trip: a concurrency lease (KEYS[1], as
# SEMAPHORE_LUA) and, for a new prediction, a slot in the calls of the last window (KEYS[2], as
# SLIDING_LOG_LUA). ARGV: max concurrency (0: none), the lease, its length (ms), max per window
# (0: none, or not a new call), a unique member, the window (ms). Returns {1, 0} when both are
# taken, else {0, ms worth waiting} and takes neither.
MODEL_SLOT_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_running, max_calls = tonumber(ARGV[1]), tonumber(ARGV[4])
local window = tonumber(ARGV[6])
if max_running > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
    if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and
            redis.call('ZCARD', KEYS[1]) >= max_running then
        local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        return {0, tonumber(first[2]) - now_ms}
    end
end
if max_calls > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - window)
    if redis.call('ZCARD', KEYS[2]) >= max_calls then
        local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        return {0, tonumber(oldest[2]) + window - now_ms + 1}
    end
    redis.call('ZADD', KEYS[2], now_ms, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], window + 1000)
end
if max_running > 0 then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
end
return {1, 0}
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


async def run_script(redis: Redis, script: str, keys: list[str], args: list[Any]) -> list[int]:
    """EVALSHA ``script`` (which answers a list of integers), loading it first if the server
    does not know it yet."""
    try:
        result = await redis.evalsha(_sha(script), len(keys), *keys, *args)  # type: ignore[misc]
    except NoScriptError:
        await redis.script_load(script)
        result = await redis.evalsha(_sha(script), len(keys), *keys, *args)  # type: ignore[misc]
    return [int(v) for v in result]


async def _run_many(redis: Redis, script: str,
                    calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
    """EVALSHA ``script`` once per call, all in one round trip (a pipeline); calls the server
    did not run because it did not know the script yet are run again once it is loaded."""
    sha = _sha(script)

    async def send(batch: list[tuple[list[str], list[Any]]]) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for keys, args in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    results = await send(calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        await redis.script_load(script)
        for i, again in zip(missing, await send([calls[i] for i in missing]), strict=True):
            results[i] = again
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [[int(v) for v in result] for result in results]


async def check_submit_rate(
    redis: Redis, prefix: str, user_id: uuid.UUID, per_minute: int
) -> float | None:
    """Count one submission of ``user_id``; None if admitted, else the seconds until one more
    is admitted (what Retry-After says). A refused submission does not count."""
    admitted, wait_ms = await run_script(
        redis, SLIDING_LOG_LUA, [f"{prefix}:limits:submits:{user_id}"],
        [per_minute, uuid.uuid4().hex, RATE_WINDOW_MS],
    )
    return None if admitted else wait_ms / 1000


@dataclass(frozen=True)
class ModelLimit:
    """A model's limits from the catalog; None is unlimited."""

    key: str
    max_concurrency: int | None
    max_per_minute: int | None

    @property
    def limited(self) -> bool:
        return self.max_concurrency is not None or self.max_per_minute is not None


class ModelSlot:
    """A held place under a model's limits: renew it while the provider works, release it
    when the provider is done."""

    def __init__(self, limits: ModelLimits, limit: ModelLimit, lease: str | None) -> None:
        self._limits, self._limit, self._lease = limits, limit, lease

    async def renew(self) -> None:
        """Extend the concurrency lease (the worker's heartbeat calls this)."""
        if self._lease is not None and self._limit.max_concurrency is not None:
            await run_script(self._limits.redis, SEMAPHORE_LUA,
                       [self._limits.concurrency_key(self._limit.key)],
                       [self._limit.max_concurrency, self._lease, self._limits.lease_ms])

    async def release(self) -> None:
        """Give the concurrency place back (a lease not released expires on its own)."""
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await self._limits.give_back(self._limits.concurrency_key(self._limit.key), lease)


# The places taken, and given back, by the jobs of one worker at the same moment share one
# round trip (group commit, shared/batch.py).
SLOT_BATCH = 64
SLOT_FLUSHES = 2


class ModelLimits:
    """The per-model limits of one worker's Redis (made inside the running event loop)."""

    def __init__(self, redis: Redis, prefix: str, lease_s: float) -> None:
        self.redis, self.prefix = redis, prefix
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._takes: Batcher[tuple[list[str], list[Any]], list[int]] = Batcher(
            self._take_many, max_batch=SLOT_BATCH, max_flushes=SLOT_FLUSHES)
        self._gives: Batcher[tuple[str, str], int] = Batcher(
            self._give_many, max_batch=SLOT_BATCH, max_flushes=SLOT_FLUSHES)

    async def _take_many(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
        return await _run_many(self.redis, MODEL_SLOT_LUA, calls)

    async def _give_many(self, leases: list[tuple[str, str]]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for key, lease in leases:
            pipe.zrem(key, lease)
        return [int(n) for n in await pipe.execute()]

    async def give_back(self, key: str, lease: str) -> None:
        """Remove ``lease`` from the concurrency set ``key``."""
        await self._gives((key, lease))

    async def drain(self) -> None:
        """Let started round trips finish (before the Redis client closes)."""
        await self._takes.drain()
        await self._gives.drain()

    def concurrency_key(self, model: str) -> str:
        return f"{self.prefix}:limits:model:{model}:running"

    def rate_key(self, model: str) -> str:
        return f"{self.prefix}:limits:model:{model}:calls"

    async def acquire(self, limit: ModelLimit, *, new_call: bool) -> ModelSlot:
        """Wait until ``limit`` lets one more call of its model start, and take the place.

        ``new_call``: the call creates a prediction (counted by ``max_per_minute``); resuming
        one already created takes only a concurrency place. Both are taken together or not at
        all, in one script (one round trip, shared with the other jobs of this worker that
        take a place at the same moment). Waiting holds nothing but this coroutine: no database
        connection, no provider call, no place.
        """
        lease = uuid.uuid4().hex
        max_calls = limit.max_per_minute if new_call and limit.max_per_minute else 0
        waited = False
        while True:
            ok, wait_ms = await self._takes((
                [self.concurrency_key(limit.key), self.rate_key(limit.key)],
                [limit.max_concurrency or 0, lease, self.lease_ms, max_calls, lease,
                 PROVIDER_WINDOW_MS],
            ))
            if ok:
                break
            waited = True
            await asyncio.sleep(_step(wait_ms))
        if waited:
            log.info("model_limit_waited", model=limit.key)
        return ModelSlot(self, limit, lease if limit.max_concurrency else None)


def _step(wait_ms: int) -> float:
    """How long to sleep before looking at a full semaphore again: until its first lease
    expires, but never so long that a released place goes unnoticed for more than a second."""
    return max(MIN_WAIT_STEP_S, min(wait_ms / 1000, MAX_WAIT_STEP_S))
