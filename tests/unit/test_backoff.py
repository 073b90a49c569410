"""Which errors the worker tries again, and the one retry loop it uses for its own writes."""

from __future__ import annotations

import errno

import asyncpg
import pytest
from PIL import UnidentifiedImageError
from redis import exceptions as redis_errors

from worker.backoff import is_transient, retry_transient


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
    ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    OSError(errno.ENOSPC, "No space left on device"),
    TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("pool is closing"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    redis_errors.ConnectionError("Error 111 connecting"),
    redis_errors.TimeoutError("Timeout reading from socket"),
])
def test_infrastructure_errors_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    ValueError("invalid literal for int() with base 10: 'abc'"),
    TypeError("int() argument must be a string, not 'NoneType'"),
    KeyError("width"),
    OSError("image file is truncated (3 bytes not processed)"),  # Pillow: no errno
    UnidentifiedImageError("cannot identify image file"),
    OSError(errno.ENOENT, "No such file or directory"),
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.exceptions.UniqueViolationError("duplicate key value"),
    asyncpg.exceptions.RaiseError("reservation not found"),
    redis_errors.ResponseError("WRONGTYPE"),
])
def test_everything_else_is_not(exc: BaseException) -> None:
    assert not is_transient(exc)


async def test_retry_transient_tries_again_only_while_it_may_help() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
        return "done"

    assert await retry_transient(flaky, what="test", base_s=0.001, max_s=0.002) == "done"
    assert len(calls) == 3

    calls.clear()

    async def wrong() -> str:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await retry_transient(wrong, what="test", base_s=0.001, max_s=0.002)
    assert len(calls) == 1

    calls.clear()

    async def down() -> str:
        calls.append(1)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(ConnectionRefusedError):
        await retry_transient(down, what="test", attempts=4, base_s=0.001, max_s=0.002)
    assert len(calls) == 4
