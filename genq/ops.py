"""Operator commands behind the CLI: each prints what it did."""

from __future__ import annotations

from shared.db import connect
from shared.services import prepare_database, resolve_services
from shared.settings import Settings


async def migrate_command(settings: Settings) -> int:
    """Apply migrations and sync the catalog; stop embedded servers this command started."""
    services = resolve_services(settings)
    try:
        applied = await prepare_database(services.database_url, settings)
        if applied:
            print("applied migrations: " + ", ".join(applied))
        else:
            print("database is up to date")
    finally:
        services.stop()
    return 0


async def status_command(settings: Settings) -> int:
    """Print migrations, models and row counts."""
    services = resolve_services(settings)
    try:
        conn = await connect(services.database_url)
        try:
            print(f"database: {_redact(services.database_url)}")
            print(f"redis:    {_redact(services.redis_url)}")
            for row in await conn.fetch(
                "SELECT version, name, applied_at FROM genq_migrations ORDER BY version"
            ):
                print(f"migration {row['name']} applied {row['applied_at']:%Y-%m-%d %H:%M:%S}")
            print(f"{'model':<28} {'provider':<10} {'media':<6} {'price':>5} {'max':>4}")
            for row in await conn.fetch(
                "SELECT key, provider, media_type, price_per_output, max_outputs "
                "FROM models WHERE enabled ORDER BY key"
            ):
                print(f"{row['key']:<28} {row['provider']:<10} {row['media_type']:<6} "
                      f"{row['price_per_output']:>5} {row['max_outputs']:>4}")
            for table in ("users", "credit_accounts", "credit_ledger", "generation_jobs",
                          "workspace_assets"):
                count = await conn.fetchval(f"SELECT count(*) FROM {table}")
                print(f"{table:<18} {count} rows")
        finally:
            await conn.close()
    finally:
        services.stop()
    return 0


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}@{host}"
    return url
