"""Everything a worker process holds open: pools, HTTP client, providers, storage."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from shared.batch import Batcher
from shared.db import POOL_CLOSE_S, Pool, close_pool, create_pool
from shared.dispatch import dispatch_after_finish
from shared.limits import ModelLimits
from shared.logging import get_logger
from shared.metrics import Metrics
from shared.plans import dispatch_on
from shared.pools import ShardedTransport
from shared.settings import Settings
from shared.storage import open_storage
from sql import queries
from worker.jobs import WorkerBatches
from worker.leases import LeaseKeeper
from worker.providers import build_providers
from worker.providers.base import Provider
from worker.staging import Stager

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = get_logger(__name__)
# Users whose jobs finished together share one dispatch (group commit, as the finalize).
DISPATCH_BATCH = 64
DISPATCH_FLUSHES = 2
# Holds settled by final writes at the same moment are read back together for the credit
# counters, off the job's path (the job has already finished).
SETTLED_BATCH = 256
SETTLED_FLUSHES = 1


def new_worker_id() -> str:
    """Unique per process start: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class WorkerContext:
    """Opened in arq's ``on_startup`` (inside the running loop), closed in ``on_shutdown``."""

    settings: Settings
    pool: Pool
    http: httpx.AsyncClient
    providers: dict[str, Provider]
    stager: Stager
    worker_id: str
    # Lease recovery runs under a session advisory lock: its connections keep asyncpg's reset
    # on release (pg_advisory_unlock_all and the rest), so a run cut short never leaves the
    # lock on a pooled connection. Jobs keep no session state, and their pool skips that
    # extra round trip per use.
    recovery_pool: Pool
    batches: WorkerBatches
    # The models' provider limits, kept in Redis (None: no Redis given, limits not enforced).
    limits: ModelLimits | None = None
    # The queue, for dispatching a user's waiting jobs when one of theirs finishes.
    redis: ArqRedis | None = None
    # Whether jobs go through the dispatch (running caps or tiers: shared.plans.dispatch_on).
    dispatch_on: bool = False
    #: This process's Prometheus series (served on GENQ_METRICS_PORT).
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self._dispatcher: Batcher[uuid.UUID, int] = Batcher(
            self._dispatch, max_batch=DISPATCH_BATCH, max_flushes=DISPATCH_FLUSHES)
        self._settled: Batcher[uuid.UUID, None] = Batcher(
            self._count_settled, max_batch=SETTLED_BATCH, max_flushes=SETTLED_FLUSHES)
        self._counting: set[asyncio.Task[None]] = set()
        #: The heartbeat of every job this process holds.
        self.leases = LeaseKeeper(self.pool, self.settings, self.worker_id)

    async def _count_settled(self, reservation_ids: list[uuid.UUID]) -> Sequence[None]:
        rows = await self.pool.fetch(queries["reservations_settled"],
                                     list(dict.fromkeys(reservation_ids)))
        for row in rows:
            self.metrics.settled(row["captured"], row["refunded"])
        return [None] * len(reservation_ids)

    async def _count(self, reservation_id: uuid.UUID) -> None:
        try:
            await self._settled(reservation_id)
        except Exception as exc:
            log.warning("credit_metrics_failed", error=repr(exc))

    def count_settlement(self, reservation_id: uuid.UUID) -> None:
        """Add what a final write settled to the credit counters, soon and off the job's path
        (the database says what was captured and refunded: a per-second price follows the
        outputs' real durations)."""
        task = asyncio.create_task(self._count(reservation_id))
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    async def _dispatch(self, users: list[uuid.UUID]) -> Sequence[int]:
        assert self.redis is not None
        s = self.settings
        done = await dispatch_after_finish(self.pool, self.redis, s.queue_name, users,
                                           s.user_max_running)
        return [0] * len(users) if not done else [len(done)] * len(users)

    async def job_finished(self, user_id: uuid.UUID) -> None:
        """With the dispatch on, a finished job frees a place: dispatch the user's next
        waiting job now, if the user is marked as having one (shared/dispatch.py). A failure
        leaves it to the scheduler's sweep."""
        if not self.dispatch_on or self.redis is None:
            return
        try:
            await self._dispatcher(user_id)
        except Exception as exc:
            log.warning("dispatch_after_finish_failed", error=repr(exc))

    @classmethod
    async def open(cls, settings: Settings, *, worker_id: str | None = None,
                   redis: ArqRedis | None = None) -> WorkerContext:
        """Connect to Postgres and build the providers and the output stager; with ``redis``,
        enforce the models' provider limits there."""
        if settings.database_url is None:
            raise ValueError("settings.database_url must be resolved before the worker starts")
        pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            reset_on_release=False,
        )
        # One connection holds the task's lock, one does its work.
        recovery_pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        # Downloads pick their own address (see staging); env proxies would bypass that check.
        # As many connections kept open as downloads may run at once (the stager's places):
        # none is closed after one download and opened again for the next.
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0), trust_env=False, follow_redirects=False,
            transport=ShardedTransport(settings.download_max_connections, trust_env=False),
        )
        stager = Stager(settings, open_storage(settings), http)
        worker_id = worker_id or new_worker_id()
        limits = (ModelLimits(redis, settings.queue_name, settings.lease_s)
                  if redis is not None else None)
        # Only the providers the catalog names (disabled models too: their queued jobs run).
        names = [r["provider"] for r in await pool.fetch(queries["catalog_providers"])]
        return cls(settings, pool, http, build_providers(settings, names), stager, worker_id,
                   recovery_pool, WorkerBatches(pool, settings, worker_id), limits, redis,
                   dispatch_on(settings))

    async def close(self, *, pool_close_s: float = POOL_CLOSE_S) -> None:
        """Close providers, the HTTP client and the pools (each pool's connections are cut
        if they are not all back after ``pool_close_s``)."""
        await self.leases.aclose()
        await self.batches.drain()
        await self._dispatcher.drain()
        if self._counting:
            await asyncio.gather(*self._counting, return_exceptions=True)
        await self._settled.drain()
        if self.limits is not None:
            await self.limits.drain()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.aclose()
        await asyncio.to_thread(self.stager.close)
        await self.stager.storage.aclose()
        await close_pool(self.pool, pool_close_s)
        await close_pool(self.recovery_pool, pool_close_s)
