"""`genq cleanup` as a real process: killed with SIGKILL half-way, then run again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.db import Pool
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.factories import files_on_disk, funded_user, queued_job, stored_assets

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, storage: Path, batch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(
        GENQ_DATABASE_URL=str(settings.database_url),
        GENQ_REDIS_URL=str(settings.redis_url),
        GENQ_DATA_DIR=str(settings.data_dir),
        GENQ_STORAGE_DIR=str(storage),
        GENQ_CLEANUP_BATCH_SIZE=str(batch),
        GENQ_LOG_FORMAT="json",
    )
    return env


async def _expired_left(pool: Pool) -> int:
    n = await pool.fetchval("SELECT count(*) FROM workspace_assets WHERE expires_at <= now()")
    assert n is not None
    return int(n)


async def test_cleanup_killed_half_way_then_finished(
    pool: Pool, settings: Settings, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    user = await funded_user(pool, 100)
    kept: set[str] = set()
    for _ in range(4):
        job = await queued_job(pool, user)
        keys = await stored_assets(
            pool, storage, user, job, [-60.0 if i % 5 else 3600.0 for i in range(1000)]
        )
        kept |= {k for i, k in enumerate(keys) if i % 5 == 0}
    total_expired = await _expired_left(pool)
    assert total_expired == 3200

    log_path = tmp_path / "cleanup.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genq", "cleanup", "--only", "expire-assets"],
        cwd=ROOT, env=_env(settings, storage.root, batch=5),
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        # Kill it once it has committed some batches but is far from done.
        for _ in range(3000):
            left = await _expired_left(pool)
            if left < total_expired - 100:
                break
            assert proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        log.close()
    left = await _expired_left(pool)
    assert 0 < left < total_expired, "the cleanup was not caught half-way"

    # Never a file without a row; rows whose file is gone may remain until the next run.
    rows = {r["storage_key"] for r in await pool.fetch(
        "SELECT storage_key FROM workspace_assets")}
    assert files_on_disk(storage) <= rows

    done = subprocess.run(
        [sys.executable, "-m", "genq", "cleanup", "--only", "expire-assets"],
        cwd=ROOT, env=_env(settings, storage.root, batch=500),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "expire_assets: " in done.stdout
    assert await _expired_left(pool) == 0
    remaining = {r["storage_key"] for r in await pool.fetch(
        "SELECT storage_key FROM workspace_assets")}
    assert remaining == kept
    assert files_on_disk(storage) == kept
