"""One poller per provider and worker process, for every prediction its jobs wait on.

A job waiting for its prediction holds a future and nothing else: no task of its own wakes to
poll. The poller keeps one timetable (a heap of due times) for every prediction being waited
on and a fixed number of tasks that make the GETs, so at most ``concurrency`` polls are in
flight however many jobs wait. Each prediction's interval starts at ``interval_s`` and grows by
half up to ``max_interval_s`` (as every provider polled before); a poll that comes due while
the tasks are all busy simply runs late, which spreads a burst out instead of queueing
connections. A waiting job is woken once, when its prediction ends (or its poll fails).

The first poll adapts to the model: once a few of its predictions have ended, a new one is
first polled at 90% of the time the quickest tenth of the last ones took (never before
``interval_s``), not a few times on the way there. A model of 2 s predictions is then polled
about once or twice per prediction instead of three or four times.

A job that stops waiting (its timeout, a cancel, its lease lost) leaves the timetable; the
prediction is polled no more unless another job waits on it too.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from shared.logging import get_logger

log = get_logger(__name__)

P = TypeVar("P")

# How many recent run times per model the first poll is planned from, how many it needs, which
# of them it takes (the quickest tenth) and how far before that time it polls.
RECENT_RUNS = 64
MIN_RUNS = 8
QUICK_QUANTILE = 0.1
EARLY = 0.9


class _Watch(Generic[P]):
    """One prediction on the timetable and the jobs waiting on it."""

    __slots__ = ("group", "interval_s", "key", "since", "waiters")

    def __init__(self, key: str, group: str, interval_s: float, since: float) -> None:
        self.key = key
        self.group = group
        self.interval_s = interval_s
        self.since = since
        self.waiters: set[asyncio.Future[P]] = set()


class Poller(Generic[P]):
    """Polls with ``poll(key)`` until ``done(answer)``; see the module's docstring.

    ``poll`` raises for a poll that failed for good (after its own retries); every job waiting
    on that key gets the error. Start it inside the running loop (lazily, on the first wait).
    """

    def __init__(self, poll: Callable[[str], Awaitable[P]], done: Callable[[P], bool], *,
                 interval_s: float, max_interval_s: float, concurrency: int) -> None:
        self._poll = poll
        self._done = done
        self._interval_s = interval_s
        self._max_interval_s = max(max_interval_s, interval_s)
        self._concurrency = concurrency
        self._watches: dict[str, _Watch[P]] = {}
        self._timetable: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None
        self._ready: asyncio.Queue[_Watch[P]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Per group (a model): how long its last predictions took to be seen done.
        self._runs: dict[str, deque[float]] = {}

    def _start(self) -> None:
        if self._tasks:
            return
        self._changed = asyncio.Event()
        self._ready = asyncio.Queue(maxsize=self._concurrency)
        # A context of their own: not the one of the job that happened to start them (its
        # log fields).
        self._tasks = [asyncio.create_task(self._schedule(), name="poller-schedule",
                                           context=contextvars.Context())]
        self._tasks += [asyncio.create_task(self._run(), name=f"poller-{i}",
                                            context=contextvars.Context())
                        for i in range(self._concurrency)]

    def _grow(self, interval_s: float) -> float:
        return min(interval_s * 1.5, self._max_interval_s)

    def _plan(self, watch: _Watch[P], delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        heapq.heappush(self._timetable, (loop.time() + delay_s, next(self._seq), watch.key))
        assert self._changed is not None
        self._changed.set()

    def _first_poll_s(self, group: str) -> float | None:
        """When to poll a new prediction of ``group`` first, from its recent run times."""
        runs = self._runs.get(group)
        if runs is None or len(runs) < MIN_RUNS:
            return None
        quick = sorted(runs)[int(len(runs) * QUICK_QUANTILE)]
        return max(self._interval_s, quick * EARLY)

    async def wait(self, key: str, *, group: str = "", first_poll_s: float | None = None) -> P:
        """The prediction's first answer that is done. The first poll comes after
        ``first_poll_s`` and the next after ``interval_s``; by default the first comes when
        the recent predictions of ``group`` suggest (see the module), else after
        ``interval_s`` (a prediction just created is rarely done at once)."""
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[P] = loop.create_future()
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(key, group, self._interval_s, loop.time())
            if first_poll_s is None:
                first_poll_s = self._first_poll_s(group)
            if first_poll_s is None:
                first_poll_s = watch.interval_s
                watch.interval_s = self._grow(watch.interval_s)
            self._plan(watch, first_poll_s)
        watch.waiters.add(future)
        try:
            return await future
        finally:
            watch.waiters.discard(future)
            if not watch.waiters and self._watches.get(key) is watch:
                # Nobody waits on it any more: its entry in the timetable is skipped.
                del self._watches[key]

    async def _schedule(self) -> None:
        """Hand each prediction to the polling tasks when it comes due."""
        assert self._changed is not None and self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._timetable:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, _, key = self._timetable[0]
            delay = due - loop.time()
            if delay > 0:
                self._changed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._timetable)
            watch = self._watches.get(key)
            if watch is not None:
                # Blocks while every polling task is busy: the poll runs late.
                await self._ready.put(watch)

    async def _run(self) -> None:
        assert self._ready is not None
        while True:
            watch = await self._ready.get()
            if self._watches.get(watch.key) is not watch:
                continue
            try:
                answer = await self._poll(watch.key)
                done = self._done(answer)
            except Exception as exc:
                # Its waiters get the error; this task goes on polling the others.
                self._settle(watch, error=exc)
                continue
            if done:
                runs = self._runs.setdefault(watch.group, deque(maxlen=RECENT_RUNS))
                runs.append(asyncio.get_running_loop().time() - watch.since)
                self._settle(watch, answer=answer)
            elif self._watches.get(watch.key) is watch:
                self._plan(watch, watch.interval_s)
                watch.interval_s = self._grow(watch.interval_s)

    def _settle(self, watch: _Watch[P], *, answer: P | None = None,
                error: Exception | None = None) -> None:
        if self._watches.get(watch.key) is watch:
            del self._watches[watch.key]
        for future in watch.waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(answer)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Stop polling; jobs still waiting are the caller's to stop."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
