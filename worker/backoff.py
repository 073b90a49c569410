"""Exponential backoff with jitter, shared by provider calls and downloads; which errors are
infrastructure trouble worth another try; and the one retry loop for the worker's own writes."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from asyncpg import exceptions as pg_errors
from redis import exceptions as redis_errors

from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# A claim or a final write that meets a connection-class error is tried this many times in all,
# waiting backoff_delay(n, RETRY_BASE_S, RETRY_MAX_S) between tries: about 3 to 6 s in all, so a
# PostgreSQL restart or a network blip of a second or two does not drop the job's delivery.
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.2
RETRY_MAX_S = 2.0

# OSError numbers that mean "the service or the disk is not there right now", not "this job is
# wrong". Pillow and others raise OSError without an errno for bad data: those are not here.
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EAGAIN,
    errno.ENOTCONN, errno.ENOSPC, errno.EDQUOT, errno.EIO,
})

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was refused
    asyncpg.InterfaceError,  # the connection closed under the client, the pool is closing
    pg_errors.OperatorInterventionError,  # class 57: shutdown, crash, cannot connect now
    pg_errors.InsufficientResourcesError,  # class 53: too many connections, disk full
    pg_errors.TransactionRollbackError,  # class 40: deadlock, serialization failure
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for infrastructure trouble (PostgreSQL, Redis, the network, the disk) that another
    try may not meet; False for anything that would fail the same way again."""
    if isinstance(exc, pg_errors.QueryCanceledError):
        return False  # a statement timeout: the same statement would time out again
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def backoff_delay(
    attempt: int, base_s: float, max_s: float, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): "equal jitter".

    Half of the capped exponential step is fixed, half is random, so retries from many jobs
    that failed together spread out without ever retrying at once.
    """
    step = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter


async def retry_transient(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = RETRY_ATTEMPTS,
    base_s: float = RETRY_BASE_S,
    max_s: float = RETRY_MAX_S,
) -> T:
    """``await op()``, tried up to ``attempts`` times while it fails with an
    :func:`is_transient` error; any other error, or the last one, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = backoff_delay(attempt, base_s, max_s)
            log.warning("retry_transient", what=what, attempt=attempt, error=repr(exc),
                        retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None if absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(0.0, seconds)
