"""running_services: the services one command runs on, for the length of an ``async with``."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.services import running_services
from shared.settings import load_settings
from tests.acceptance.stack_support import alive
from tests.conftest import embedded_data_dir


class _Boom(Exception):
    pass


async def test_it_migrates_yields_the_urls_and_stops_only_what_it_started(
    empty_database_url: str,
) -> None:
    with embedded_data_dir() as data_dir:
        # PostgreSQL configured (the suite's), Redis unset: an embedded valkey for the block.
        settings = load_settings(database_url=empty_database_url, redis_url=None,
                                 data_dir=data_dir, _env_file=None)
        with pytest.raises(_Boom):
            async with running_services(settings) as running:
                assert running.database_url == empty_database_url
                assert running.settings.database_url == empty_database_url
                assert running.settings.redis_url == running.redis_url
                valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
                assert alive(valkey_pid)
                client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
                    running.redis_url)
                assert await client.ping()
                await client.aclose()
                raise _Boom  # the command fails: what it started still stops

    assert not alive(valkey_pid)
    # It migrated the database it was given, and left that server (not its own) running.
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM genq_migrations") > 0
        assert await conn.fetchval("SELECT count(*) FROM models") > 0
    finally:
        await conn.close()


async def test_prepare_false_leaves_the_database_as_it_is(empty_database_url: str) -> None:
    with embedded_data_dir() as data_dir:
        settings = load_settings(database_url=empty_database_url, redis_url=None,
                                 data_dir=data_dir, _env_file=None)
        async with running_services(settings, prepare=False) as running:
            conn = await asyncpg.connect(running.database_url)
            try:
                assert await conn.fetchval("SELECT to_regclass('genq_migrations')") is None
            finally:
                await conn.close()
