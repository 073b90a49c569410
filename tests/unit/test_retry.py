"""Which errors are worth another try, and the one retry loop every retry goes through."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import asyncpg
import pytest
from PIL import UnidentifiedImageError
from redis import exceptions as redis_errors

from shared.retry import is_transient, retry, retry_transient


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


async def test_retry_waits_what_the_server_asks_and_stops_on_other_errors() -> None:
    seen: list[str] = []

    async def busy_then_done() -> str:
        seen.append("call")
        if len(seen) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "busy")
        return "done"

    asked: list[BaseException] = []

    def retry_after(exc: Exception) -> float | None:
        asked.append(exc)
        return 0.0

    result = await retry(busy_then_done, what="test", attempts=5, retry_on=is_transient,
                         base_s=30.0, max_s=60.0, delay_s=retry_after)
    assert result == "done"
    assert len(seen) == 3 and len(asked) == 2

    seen.clear()

    async def refused() -> str:
        seen.append("call")
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        await retry(refused, what="test", attempts=5, retry_on=is_transient, base_s=0.0,
                    max_s=0.0)
    assert seen == ["call"]


def _hand_written_retry_loops(root: Path) -> list[str]:
    """Loops shaped like a retry: a ``for``/``while`` whose body has a ``try`` that returns
    on success and is tried again after an ``except``."""
    found = []
    for folder in ("api", "worker", "genq", "shared", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "shared" / "retry.py":
                continue
            for loop in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(loop, ast.For | ast.AsyncFor | ast.While):
                    continue
                for stmt in loop.body:
                    if isinstance(stmt, ast.Try) and stmt.handlers and any(
                        isinstance(node, ast.Return)
                        for part in stmt.body for node in ast.walk(part)
                    ):
                        found.append(f"{path.relative_to(root)}:{loop.lineno}")
    return found


def test_every_retry_goes_through_the_one_helper() -> None:
    assert _hand_written_retry_loops(Path(__file__).resolve().parents[2]) == []
