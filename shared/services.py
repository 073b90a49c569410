"""Resolve the services a process uses and get the database ready."""

from __future__ import annotations

from shared.catalog import load_catalog, sync_catalog
from shared.db import connect, migrate
from shared.embedded import Services, ensure_services
from shared.settings import Settings


def resolve_services(settings: Settings) -> Services:
    """Configured URLs, or embedded servers under ``settings.data_dir`` for the unset ones."""
    return ensure_services(settings.database_url, settings.redis_url, settings.data_dir)


async def prepare_database(database_url: str, settings: Settings) -> list[str]:
    """Apply pending migrations and sync the model catalog; return the migrations applied."""
    specs = load_catalog(settings.models_file)
    conn = await connect(database_url)
    try:
        applied = await migrate(conn)
        await sync_catalog(conn, specs)
    finally:
        await conn.close()
    return applied
