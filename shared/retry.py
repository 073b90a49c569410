"""The one retry-with-backoff loop (:func:`retry`) and what it is made of: exponential backoff
with jitter (:func:`backoff_delay`) and which errors are infrastructure trouble worth another try
(:func:`is_transient`).

Every place that tries an operation again uses :func:`retry`: the worker's claim and final
write (:func:`retry_transient`), calls to Replicate, output downloads, and the intake's retry of
a submission that met a deadlock."""

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


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int,
    retry_on: Callable[[Exception], bool],
    base_s: float,
    max_s: float,
    delay_s: Callable[[Exception], float | None] | None = None,
    event: str = "retry",
    **log_fields: object,
) -> T:
    """``await op()``, tried up to ``attempts`` times in all while it fails with an error that
    ``retry_on`` accepts; any other error, or the last one, is raised unchanged.

    Between tries it waits ``backoff_delay(n, base_s, max_s)``, or what ``delay_s(error)`` says
    when that is not None (a server's ``Retry-After``). Each retry is logged as ``event`` with
    ``what``, the attempt, the error, the wait and ``log_fields``.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as exc:
            if attempt >= attempts or not retry_on(exc):
                raise
            wait = delay_s(exc) if delay_s is not None else None
            if wait is None:
                wait = backoff_delay(attempt, base_s, max_s)
            log.warning(event, what=what, attempt=attempt, error=repr(exc),
                        retry_in_s=round(wait, 3), **log_fields)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def retry_transient(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = RETRY_ATTEMPTS,
    base_s: float = RETRY_BASE_S,
    max_s: float = RETRY_MAX_S,
) -> T:
    """:func:`retry` while ``op`` fails with an :func:`is_transient` error (the worker's own
    writes to PostgreSQL)."""
    return await retry(op, what=what, attempts=attempts, retry_on=is_transient, base_s=base_s,
                       max_s=max_s, event="retry_transient")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None if absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(0.0, seconds)
