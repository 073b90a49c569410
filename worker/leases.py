"""The heartbeat of every job a worker process holds: one task and one statement per beat.

Each running attempt registers with :class:`LeaseKeeper` while it works. Every
``min(heartbeat_s, lease_s / 3)`` the keeper renews the leases of all of them in one UPDATE
(``renew_leases``) and tells each attempt what it learned: its lease was lost (another attempt
holds the job now), or a cancel was requested. An attempt registered between two beats is
renewed at the next one, so no lease goes longer than one interval without a renewal, as with
a heartbeat per job. A beat that fails (PostgreSQL out of reach) is logged and the next one
tries again: the attempt number fences every write if a lease runs out meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from shared.db import Pool
from shared.logging import get_logger
from shared.settings import Settings
from worker import jobs
from worker.jobs import ClaimedJob

log = get_logger(__name__)

#: Called with (still held, cancel_requested_at) after each beat that reached PostgreSQL, in
#: the context the job was held from (its log fields); what it returns (a model slot's
#: renewal, say) is awaited, in that context too, before the next beat.
OnBeat = Callable[[bool, datetime | None], Coroutine[Any, Any, None] | None]


class _Held:
    __slots__ = ("context", "job", "on_beat")

    def __init__(self, job: ClaimedJob, on_beat: OnBeat) -> None:
        self.job = job
        self.on_beat = on_beat
        self.context = contextvars.copy_context()


class LeaseKeeper:
    """Renews the leases of the jobs this process holds; see the module's docstring."""

    def __init__(self, pool: Pool, settings: Settings, owner: str) -> None:
        self.pool, self.settings, self.owner = pool, settings, owner
        self.interval_s = min(settings.heartbeat_s, settings.lease_s / 3)
        self._held: dict[uuid.UUID, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self._beating = False  # a beat's statement is in flight

    def hold(self, job: ClaimedJob, on_beat: OnBeat) -> None:
        """Renew ``job``'s lease from the next beat on, until :meth:`release` or until a beat
        finds the lease lost or a cancel requested (``on_beat`` hears of it, and the job
        leaves the keeper)."""
        self._held[job.id] = _Held(job, on_beat)
        if self._task is None or self._task.done():
            # A context of its own, not the one of the job that happened to start it.
            self._task = asyncio.create_task(self._beat_forever(), name="lease-keeper",
                                             context=contextvars.Context())

    def release(self, job: ClaimedJob) -> None:
        """Stop renewing ``job``'s lease (this attempt is done with it)."""
        held = self._held.get(job.id)
        if held is not None and held.job is job:
            del self._held[job.id]

    async def _beat_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.interval_s)
            if self._held:
                self._beating = True
                try:
                    await self.beat()
                finally:
                    self._beating = False

    async def beat(self) -> None:
        """Renew every held lease now, in one statement, and tell each attempt."""
        held = list(self._held.values())
        try:
            still = await jobs.renew_leases(self.pool, [h.job for h in held], self.owner,
                                            self.settings.lease_s)
        except Exception as exc:
            log.warning("heartbeat_failed", jobs=len(held), error=repr(exc))
            return
        pending = []
        for h in held:
            if self._held.get(h.job.id) is not h:
                continue  # released while the statement ran
            ours = h.job.id in still
            cancel_at = still.get(h.job.id)
            if not ours or cancel_at is not None:
                del self._held[h.job.id]
            answer = h.context.run(h.on_beat, ours, cancel_at)
            if answer is not None:
                pending.append(asyncio.create_task(answer, context=h.context))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop beating (the jobs are over or handed back). A beat whose statement is in
        flight is let finish (the pool's command timeout bounds it), not cancelled: a
        statement cut short makes asyncpg send PostgreSQL a cancel request on a connection
        of its own, and the pool's close waits on that exchange."""
        self._held.clear()
        task, self._task = self._task, None
        if task is None:
            return
        if not self._beating:
            task.cancel()  # asleep between beats; with nothing held it would end anyway
        await asyncio.gather(task, return_exceptions=True)
