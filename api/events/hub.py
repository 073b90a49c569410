"""One API process's live events: a single PostgreSQL connection that follows the table, fanned
out in memory.

Every change of a job writes a ``job_events`` row in the transaction that makes it
(0024_job_events.sql, 0034_job_events_xid_order.sql). While any stream is open the hub reads,
every :data:`POLL_S`, the ids and owners of the events after the last one it saw, then the full
events its streams want, and puts each into the queue of every subscription of that user (and
job). Streams never touch the database while they wait, so a thousand open streams cost one
connection and one read per round. (The writers send no notification: ``pg_notify`` makes every
notifying transaction commit one after another, and so would the events' own lock it replaced.)

Readers only read below the horizon (the events of transactions older than the oldest one of
the database still running), below which no event can still appear, so "after the last id
seen" never skips one. A stream first subscribes, then reads what it missed from the table
(``Last-Event-ID``), then takes its queue, dropping ids it already sent: an event either is
below the horizon of that read (it is in it) or is read by the hub after the subscription (it
is in the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg

from shared.db import Connection, connect
from shared.logging import get_logger
from sql import queries

log = get_logger(__name__)

#: The hub reads the table this often while a stream is open.
POLL_S = 0.05
#: With no stream open, it reads only where the table ends, this often.
IDLE_POLL_S = 1.0
#: Events read per round trip.
BATCH = 1000
#: Events one subscription may have waiting; a client that falls further behind is cut off
#: and resumes from the table with Last-Event-ID.
QUEUE_MAX = 1000
#: How long the hub waits before connecting again after losing its connection.
RECONNECT_S = 1.0


@dataclass(eq=False)
class Subscription:
    """One stream's place in the hub: the events of ``user_id`` (of ``job_id`` only, if set)
    in id order; ``overflowed`` once it fell :data:`QUEUE_MAX` behind."""

    user_id: uuid.UUID
    job_id: uuid.UUID | None
    queue: asyncio.Queue[asyncpg.Record] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    overflowed: bool = False

    def offer(self, event: asyncpg.Record) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def reset(self) -> None:
        """Forget what is waiting and take events again (the stream reads the table)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False


class EventHub:
    """The live events of one API process (see the module docstring)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subs: dict[uuid.UUID, set[Subscription]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None
        self._cursor = 0
        # Set once the hub has connected and knows where the table ends.
        self.ready = asyncio.Event()

    @property
    def subscriptions(self) -> int:
        """Open subscriptions (one per open stream)."""
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        """Connect and start following the table."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="genq-event-hub")

    async def close(self) -> None:
        """Stop following and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    @contextlib.contextmanager
    def subscribe(self, user_id: uuid.UUID, job_id: uuid.UUID | None = None,
                  ) -> Iterator[Subscription]:
        """A subscription for the ``with`` block; it is gone when the block ends."""
        sub = Subscription(user_id, job_id)
        self._subs.setdefault(user_id, set()).add(sub)
        # The hub follows the table closely again from now.
        self._wake.set()
        try:
            yield sub
        finally:
            subs = self._subs.get(user_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[user_id]

    async def _connect(self) -> None:
        conn = await connect(self._url)
        try:
            if not self.ready.is_set():
                self._cursor = await conn.fetchval(queries["events_head"])
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.ready.set()

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S if self._subs else IDLE_POLL_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._disconnect()
                    await self._connect()
                await self._follow()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The next round connects again and reads from where this one stopped.
                log.warning("event_hub_error", error=repr(exc))
                await self._disconnect()
                await asyncio.sleep(RECONNECT_S)
                self._wake.set()

    async def _follow(self) -> None:
        """Read every event after the cursor and hand the wanted ones to their streams."""
        conn = self._conn
        assert conn is not None
        if not self._subs:
            # Nobody listens here: skip to the end. Checked again after the read: a stream that
            # subscribes later reads the table after it, so it has every event up to that end.
            head = await conn.fetchval(queries["events_head"])
            if not self._subs:
                self._cursor = max(self._cursor, head)
                return
        while True:
            rows = await conn.fetch(queries["events_after"], self._cursor, BATCH)
            if not rows:
                return
            wanted = [r["id"] for r in rows if self._wants(r["user_id"], r["job_id"])]
            if wanted:
                for event in await conn.fetch(queries["read_events"], wanted):
                    self._deliver(event)
            self._cursor = rows[-1]["id"]
            if len(rows) < BATCH:
                return

    def _wants(self, user_id: uuid.UUID, job_id: uuid.UUID) -> bool:
        return any(s.job_id is None or s.job_id == job_id for s in self._subs.get(user_id, ()))

    def _deliver(self, event: asyncpg.Record) -> None:
        # The subscriptions are read now, after the read: a stream that subscribed meanwhile
        # gets the event too.
        for sub in list(self._subs.get(event["user_id"], ())):
            if sub.job_id is None or sub.job_id == event["id"]:
                sub.offer(event)
