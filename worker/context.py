"""Everything a worker process holds open: pools, HTTP client, providers, storage."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass

import httpx

from shared.db import Pool, create_pool
from shared.settings import Settings
from shared.storage import open_storage
from sql import queries
from worker.jobs import WorkerBatches
from worker.providers import build_providers
from worker.providers.base import Provider
from worker.staging import Stager


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

    @classmethod
    async def open(cls, settings: Settings, *, worker_id: str | None = None) -> WorkerContext:
        """Connect to Postgres and build the providers and the output stager."""
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
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0), trust_env=False, follow_redirects=False
        )
        stager = Stager(settings, open_storage(settings), http)
        worker_id = worker_id or new_worker_id()
        # Only the providers the catalog names (disabled models too: their queued jobs run).
        names = [r["provider"] for r in await pool.fetch(queries["catalog_providers"])]
        return cls(settings, pool, http, build_providers(settings, names), stager, worker_id,
                   recovery_pool, WorkerBatches(pool, settings, worker_id))

    async def close(self) -> None:
        """Close providers, the HTTP client and the pools."""
        await self.batches.drain()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.aclose()
        await asyncio.to_thread(self.stager.close)
        await self.stager.storage.aclose()
        await self.pool.close()
        await self.recovery_pool.close()
