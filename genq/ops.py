"""Operator commands behind the CLI: each prints what it did."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Coroutine
from typing import Any

import uvloop

from shared.db import connect
from shared.errors import GenqError
from shared.services import prepare_database, running_services
from shared.settings import Settings


async def migrate_command(settings: Settings) -> int:
    """Apply migrations and sync the catalog; stop embedded servers this command started."""
    async with running_services(settings, prepare=False) as running:
        applied = await prepare_database(running.database_url, settings)
    if applied:
        print("applied migrations: " + ", ".join(applied))
    else:
        print("database is up to date")
    return 0


class NotMigrated(GenqError):
    """The database has no genq schema yet: run `genq migrate` first."""

    code = "not_migrated"


async def status_command(settings: Settings) -> int:
    """Print migrations, models and row counts; :class:`NotMigrated` on a database genq never
    migrated (it changes nothing)."""
    async with running_services(settings, prepare=False) as running:
        conn = await connect(running.database_url)
        try:
            print(f"database: {_redact(running.database_url)}")
            print(f"redis:    {_redact(running.redis_url)}")
            if await conn.fetchval("SELECT to_regclass('genq_migrations')") is None:
                raise NotMigrated(
                    "the database is not migrated (it has no genq tables): "
                    "run `genq migrate` first"
                )
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
    return 0


def _redact(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user, colon, _ = creds.partition(":")
        return f"{scheme}{sep}{user}{colon and ':***'}@{host}"
    return url


def run_until_signal(coro: Coroutine[Any, Any, None]) -> int:
    """Run a long-lived process on a uvloop event loop (its transports in C: a fifth of the
    webhook delivery loop's CPU went to the standard loop's socket writes); SIGINT or SIGTERM
    cancels it so it can shut down cleanly."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    uvloop.run(main())
    return 0


async def cleanup_command(settings: Settings, only: list[str] | None) -> int:
    """Run maintenance tasks once and print one line per task."""
    from worker.scheduler import TASKS, run_once

    async with running_services(settings) as running:
        reports = await run_once(
            settings, running.database_url, running.redis_url, only or list(TASKS)
        )
        for report in reports:
            print(report.summary())
    return 0


async def scheduler_command(settings: Settings) -> None:
    """Run the scheduler until cancelled."""
    from worker.scheduler import run_scheduler

    async with running_services(settings) as running:
        await run_scheduler(settings, running.database_url, running.redis_url)


def up_command(settings: Settings, host: str, port: int) -> int:
    """Run the stack until SIGINT/SIGTERM (exit 0), restarting a process that dies; give up and
    stop everything (exit 1) if one keeps dying."""
    import time

    from genq.stack import Stack, StartCancelled, pick_port

    stack = Stack(settings, host=host, port=pick_port(port))

    def stop(signum: int, frame: object) -> None:
        # Also heard during start-up: start() and wait_ready() give up at once.
        stack.stop_requested = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        stack.wait_ready()
        print(f"genq is up: API at {stack.base_url} (Ctrl-C to stop)", flush=True)
        urls = stack.metrics_urls()
        print("metrics: " + ", ".join(f"{name} {url}" for name, url in urls.items())
              + " (the API's to the admin token)", flush=True)
        while not stack.stop_requested:
            stack.supervise()
            time.sleep(0.2)
    except StartCancelled:
        pass
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("genq stopped", flush=True)
    return 0


async def users_create_command(settings: Settings, email: str) -> int:
    """Create a user and print its API key once."""
    from shared.users import create_user

    async with running_services(settings) as running:
        conn = await connect(running.database_url)
        try:
            user = await create_user(conn, email)
        finally:
            await conn.close()
    print(f"user_id: {user.id}")
    print(f"email:   {user.email}")
    print(f"api_key: {user.api_key}   (shown once; store it now)")
    return 0


async def credits_grant_command(
    settings: Settings, user_id: uuid.UUID, amount: int, reason: str | None, key: str | None
) -> int:
    """Grant credits and print the new balance."""
    from shared import ledger

    async with running_services(settings, prepare=False) as running:
        conn = await connect(running.database_url)
        try:
            grant = await ledger.grant(conn, user_id, amount, idempotency_key=key, reason=reason)
        finally:
            await conn.close()
    replay = " (already granted with this key; nothing changed)" if grant.replayed else ""
    print(f"granted {amount} to {user_id}: balance {grant.balance_after}, "
          f"ledger entry {grant.entry_id}{replay}")
    return 0
