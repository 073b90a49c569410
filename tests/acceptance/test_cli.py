"""The genq command line as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared import ledger
from shared.db import Pool
from shared.settings import Settings
from tests.acceptance.stack_support import ROOT, clean_env

COMMANDS = ["up", "demo", "api", "worker", "scheduler", "migrate", "users", "users create",
            "credits", "credits grant", "cleanup", "status"]


def _genq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(GENQ_DATABASE_URL=str(settings.database_url),
                    GENQ_REDIS_URL=str(settings.redis_url), GENQ_DATA_DIR=str(settings.data_dir))
    return subprocess.run([sys.executable, "-m", "genq", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(settings: Settings, command: str) -> None:
    result = _genq(settings, *command.split(), "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: genq {command}")


async def test_users_create_and_credits_grant(settings: Settings, pool: Pool) -> None:
    created = _genq(settings, "users", "create", "grace@example.com")
    assert created.returncode == 0, created.stderr
    user_id = re.search(r"user_id: (\S+)", created.stdout)
    api_key = re.search(r"api_key: (gq_\S+)", created.stdout)
    assert user_id
    assert api_key
    # The key is shown once; only its prefix and hash are stored.
    stored = await pool.fetchrow(
        "SELECT prefix, key_hash FROM api_keys WHERE user_id = $1", uuid.UUID(user_id.group(1))
    )
    assert stored is not None
    assert stored["prefix"] == api_key.group(1)[:10]
    assert api_key.group(1).encode() not in bytes(stored["key_hash"])

    for _ in range(2):
        granted = _genq(settings, "credits", "grant", user_id.group(1), "40",
                        "--reason", "welcome", "--idempotency-key", "welcome-grace")
        assert granted.returncode == 0, granted.stderr
    assert "nothing changed" in granted.stdout
    account = await ledger.get_account(pool, uuid.UUID(user_id.group(1)))
    assert (account.balance, account.reserved) == (40, 0)

    again = _genq(settings, "users", "create", "GRACE@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr

    bad = _genq(settings, "credits", "grant", user_id.group(1), "0")
    assert bad.returncode == 2
    assert "positive integer" in bad.stderr


def test_status_shows_the_service_urls_without_their_passwords(settings: Settings) -> None:
    result = _genq(settings, "status")
    assert result.returncode == 0, result.stderr
    for url in (settings.database_url, settings.redis_url):
        password = urlsplit(str(url)).password
        assert password  # the suite's embedded servers require one
        assert password not in result.stdout + result.stderr
    assert re.search(r"^database: postgresql://postgres:\*\*\*@127\.0\.0\.1:\d+/", result.stdout,
                     re.MULTILINE)
    assert re.search(r"^redis: +redis://:\*\*\*@127\.0\.0\.1:\d+/0$", result.stdout, re.MULTILINE)


async def test_status_on_a_database_never_migrated_says_so_and_changes_nothing(
    settings: Settings, empty_database_url: str
) -> None:
    result = _genq(settings.model_copy(update={"database_url": empty_database_url}), "status")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "genq: the database is not migrated (it has no genq tables): run `genq migrate` first"
    )
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
    finally:
        await conn.close()
    assert tables == 0
