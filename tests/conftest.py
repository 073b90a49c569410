"""Shared fixtures: real PostgreSQL and Redis for every test that asks for them.

``GENQ_TEST_DATABASE_URL`` / ``GENQ_TEST_REDIS_URL`` point the suite at existing servers; unset,
the suite starts the same embedded servers genq itself uses, once per run. Each test gets its own
database cloned from a migrated template, and its own queue name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from shared.db import Pool, create_pool
from shared.embedded import Services, ensure_services
from shared.queue import create_arq_pool
from shared.services import prepare_database
from shared.settings import Settings, load_settings
from tests.s3_support import S3Server, run_s3_server


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A data folder for embedded servers, removed afterwards.

    Readable by others (pytest's own temp folders are not): as root the embedded PostgreSQL runs
    as an unprivileged user, which must reach it.
    """
    base = Path(tempfile.mkdtemp(prefix="genq-test-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    db_url = os.environ.get("GENQ_TEST_DATABASE_URL") or None
    redis_url = os.environ.get("GENQ_TEST_REDIS_URL") or None
    with embedded_data_dir() as data_dir:
        found = ensure_services(db_url, redis_url, data_dir, fast=True)
        try:
            yield found
        finally:
            found.stop()


@pytest.fixture(scope="session")
def settings_base(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(data_dir=tmp_path_factory.mktemp("data"), _env_file=None)


@pytest.fixture(scope="session")
async def template_db(services: Services, settings_base: Settings) -> AsyncIterator[str]:
    name = f"genq_tpl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await prepare_database(_with_database(services.database_url, name), settings_base)
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _clone(services: Services, template: str) -> str:
    name = f"genq_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name


async def _drop(services: Services, name: str) -> None:
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(services: Services, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone."""
    name = await _clone(services, template_db)
    yield _with_database(services.database_url, name)
    await _drop(services, name)


@pytest.fixture
async def empty_database_url(services: Services) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name = f"genq_e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(services.database_url, name)
    await _drop(services, name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = await create_pool(database_url, min_size=1, max_size=20)
    yield p
    await p.close()


@pytest.fixture
def queue_name() -> str:
    return f"genq:test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(services: Services) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(services.redis_url)  # type: ignore[no-untyped-call]
    yield client
    await client.aclose()


@pytest.fixture
async def arq_redis(services: Services) -> AsyncIterator[ArqRedis]:
    """An arq pool on the session's Redis."""
    redis = await create_arq_pool(services.redis_url)
    yield redis
    await redis.aclose(close_connection_pool=True)


@pytest.fixture
def settings(
    services: Services, database_url: str, queue_name: str, tmp_path: Path
) -> Settings:
    """Settings for one test: its own database, queue and data folder."""
    return load_settings(
        database_url=database_url,
        redis_url=services.redis_url,
        data_dir=tmp_path / "data",
        queue_name=queue_name,
        admin_token="test-admin-token-0123456789abcdef",
        _env_file=None,
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, for the whole run."""
    yield from run_s3_server()
