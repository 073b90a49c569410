"""Group commit: concurrent callers share one round trip (and one commit).

A caller hands its item to a :class:`Batcher` and waits. Items that arrive while a flush is in
flight (or waiting for a slot) go out together in the next one, so under load N concurrent
calls cost about N / batch round trips instead of N, and an idle system pays nothing: a lone
call is flushed at once, with no timer. This is how databases group WAL flushes, applied to
the round trips of one process.

``flush`` gets the items in arrival order and returns one result per item, in the same order;
a result that is an exception is raised to that item's caller only. If ``flush`` itself raises,
every caller of that batch gets the exception.

With ``key``, items of one key never go out in two flushes at once: an item whose key is in a
flush in flight waits for the next flush after it, with the others of its key that came
meanwhile. Where a flush locks something per key (an account's row), concurrent flushes would
only wait for each other's commits; this way one key's items take the lock once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """A done callback that marks the future's exception seen, for a future whose outcome is
    read elsewhere or by nobody (here: the caller gets it through the shield, or left
    already), so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class Batcher(Generic[T, R]):
    """Batches calls for one ``flush`` function; at most ``max_flushes`` run at once, each
    with at most ``max_batch`` items (and with ``key``, no key in two of them)."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int, max_flushes: int,
                 key: Callable[[T], Hashable] | None = None) -> None:
        if max_batch < 1 or max_flushes < 1:
            raise ValueError("max_batch and max_flushes must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._key = key
        self._busy: set[Hashable] = set()  # the keys of the flushes in flight
        self._slots = asyncio.Semaphore(max_flushes)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._waiting = 0  # flush tasks started and not yet holding their batch
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        """Send ``item`` with the next batch; its own result, or its own exception."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(retrieve_exception)
        self._pending.append((item, future))
        self._schedule()
        # shield: a caller that goes away (client disconnect) must not cancel what its batch
        # may already have written; the flush still sets the result, nobody reads it.
        return await asyncio.shield(future)

    def _schedule(self) -> None:
        # One waiting flush per max_batch pending items is enough: it takes them all.
        needed = -(-len(self._pending) // self._max_batch)
        while self._waiting < needed:
            self._waiting += 1
            task = asyncio.get_running_loop().create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async with self._slots:
            self._waiting -= 1
            if self._key is None:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                if batch:
                    await self._deliver(batch)
            else:
                keys, batch = self._take()
                if not batch:
                    # Every pending item waits for a flush in flight, which schedules again
                    # when it ends.
                    return
                try:
                    await self._deliver(batch)
                finally:
                    self._busy -= keys
        if self._pending:
            self._schedule()

    def _take(self) -> tuple[set[Hashable], list[tuple[T, asyncio.Future[R]]]]:
        """The next batch in arrival order, without the items whose key is in flight, and
        its keys (now in flight)."""
        assert self._key is not None
        keys: set[Hashable] = set()
        batch: list[tuple[T, asyncio.Future[R]]] = []
        left: list[tuple[T, asyncio.Future[R]]] = []
        for entry in self._pending:
            key = self._key(entry[0])
            if len(batch) < self._max_batch and key not in self._busy:
                keys.add(key)
                batch.append(entry)
            else:
                left.append(entry)
        self._pending = left
        self._busy |= keys
        return keys, batch

    async def _deliver(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"flush returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # every caller of this batch learns what happened
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def drain(self) -> None:
        """Wait for every started flush (call before closing what ``flush`` uses)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
