"""Resolve the services a process uses and get the database ready."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shared.catalog import load_catalog, sync_catalog
from shared.db import connect, migrate
from shared.embedded import Services, ensure_services
from shared.plans import load_plans, sync_plans
from shared.settings import Settings


def resolve_services(settings: Settings) -> Services:
    """Configured URLs, or embedded servers under ``settings.data_dir`` for the unset ones."""
    return ensure_services(settings.database_url, settings.redis_url, settings.data_dir)


async def prepare_database(database_url: str, settings: Settings) -> list[str]:
    """Apply pending migrations and sync the model and plan catalogs; return the migrations
    applied."""
    specs = load_catalog(settings.models_file)
    plans = load_plans(settings.plans_file)
    conn = await connect(database_url)
    try:
        applied = await migrate(conn)
        await sync_catalog(conn, specs)
        await sync_plans(conn, plans)
    finally:
        await conn.close()
    return applied


@dataclass(frozen=True)
class Running:
    """The services a command runs on: resolved URLs, and the settings with them filled in."""

    settings: Settings
    # They may carry a password: never in a repr or a log line.
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    # name ("postgres", "valkey") -> pid of each embedded server in use.
    server_pids: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running_services(settings: Settings, *, prepare: bool = True) -> AsyncIterator[Running]:
    """The services of one command, for the length of the block.

    Resolves them (the configured URLs, embedded servers under ``settings.data_dir`` for the
    unset ones), migrates and syncs the catalog unless ``prepare`` is false, and yields them.
    However the block ends, the embedded servers this process started are stopped (never ones
    it only attached to).
    """
    services = resolve_services(settings)
    try:
        if prepare:
            await prepare_database(services.database_url, settings)
        resolved = settings.model_copy(
            update={"database_url": services.database_url, "redis_url": services.redis_url}
        )
        yield Running(resolved, services.database_url, services.redis_url,
                      {server.name: server.pid for server in services.servers})
    finally:
        services.stop()
