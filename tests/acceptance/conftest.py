"""Fixtures for tests that run real genq processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.embedded import Services
from tests.acceptance.recovery_support import Processes, redis_db_url
from tests.conftest import embedded_data_dir

# A Redis database no other test uses, so a test may FLUSHDB it (tests run one at a time).
PRIVATE_REDIS_DB = 9


@pytest.fixture
async def private_redis_url(services: Services) -> AsyncIterator[str]:
    """The session's Redis server, database 9, empty before and after the test."""
    url = redis_db_url(services.redis_url, PRIVATE_REDIS_DB)
    client: aioredis.Redis = aioredis.from_url(url)  # type: ignore[no-untyped-call]
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def clean_data_dir() -> Iterator[Path]:
    """A fresh, empty GENQ_DATA_DIR for a run on the embedded default; removed afterwards."""
    with embedded_data_dir() as base:
        yield base / "genq-data"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start genq processes; any still running at the end is killed."""
    p = Processes(tmp_path)
    yield p
    p.close()
