"""`genq cleanup --only purge-trash` as a real process: killed with SIGKILL half-way, it loses no
item still in the trash and leaves no row without its file; run again, it finishes, and the
orphan sweep removes the files of the batch it was killed in."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.db import Pool
from shared.library import new_short_id
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.acceptance.test_cleanup_process import ROOT, _env
from tests.factories import files_on_disk, funded_user
from worker import maintenance

TTL_S = 30 * 24 * 3600


async def _trash(pool: Pool, storage: LocalStorage, user: uuid.UUID, count: int,
                 deleted_ago_s: float | None) -> set[str]:
    """``count`` library items with a file and a thumb each; deleted that long ago (None: not
    deleted). Returns their files' keys."""
    now = datetime.now(UTC)
    deleted_at = None if deleted_ago_s is None else now - timedelta(seconds=deleted_ago_s)
    items, variants, keys = [], [], set()
    for _ in range(count):
        item, short = uuid.uuid4(), new_short_id()
        key, thumb = f"library/{user}/{short}.png", f"library/{user}/{short}.thumb.webp"
        storage.write_bytes(key, b"\x89PNG\r\n\x1a\n" + item.bytes)
        storage.write_bytes(thumb, b"RIFF0000WEBP")
        keys |= {key, thumb}
        items.append((item, user, short, "image", key, 24, "image/png", deleted_at))
        variants.append((item, "thumb", "image/webp", 1, 1, 12, thumb))
    await pool.copy_records_to_table(
        "user_library", records=items,
        columns=["id", "user_id", "short_id", "asset_type", "storage_key", "file_size_bytes",
                 "mime_type", "deleted_at"])
    await pool.copy_records_to_table(
        "library_variants", records=variants,
        columns=["item_id", "kind", "mime_type", "width", "height", "file_size_bytes",
                 "storage_key"])
    return keys


async def _past_ttl(pool: Pool) -> int:
    n = await pool.fetchval(
        "SELECT count(*) FROM user_library WHERE deleted_at <= now() - make_interval(secs => $1)",
        float(TTL_S))
    return int(n or 0)


async def _row_keys(pool: Pool) -> set[str]:
    rows = await pool.fetch("SELECT storage_key FROM user_library UNION ALL"
                            " SELECT storage_key FROM library_variants")
    return {r["storage_key"] for r in rows}


async def test_purge_killed_half_way_then_finished(
    pool: Pool, settings: Settings, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    user = await funded_user(pool, 0)
    await _trash(pool, storage, user, 2000, deleted_ago_s=TTL_S + 3600)
    kept = await _trash(pool, storage, user, 50, deleted_ago_s=TTL_S - 3600)  # restorable
    kept |= await _trash(pool, storage, user, 50, deleted_ago_s=None)
    assert await _past_ttl(pool) == 2000

    log_path = tmp_path / "purge.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genq", "cleanup", "--only", "purge-trash"],
        cwd=ROOT, env=_env(settings, storage.root, batch=5), stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(3000):
            if await _past_ttl(pool) < 2000 - 100:
                break
            assert proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        log.close()
    left = await _past_ttl(pool)
    assert 0 < left < 2000, "the purge was not caught half-way"
    # Every row still has its file (and its thumb's); items in the trash are all there.
    assert await _row_keys(pool) <= files_on_disk(storage)
    assert kept <= await _row_keys(pool)

    done = subprocess.run(
        [sys.executable, "-m", "genq", "cleanup", "--only", "purge-trash"],
        cwd=ROOT, env=_env(settings, storage.root, batch=500),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "purge_trash: " in done.stdout
    assert await _past_ttl(pool) == 0
    assert await _row_keys(pool) == kept
    # At most the files of the batch the kill cut short are left; the orphan sweep takes them.
    leftover = files_on_disk(storage) - kept
    assert len(leftover) <= 2 * 5
    await maintenance.sweep_orphan_files(pool, storage, 100, grace_s=-10)
    assert files_on_disk(storage) == kept
    assert await pool.fetchval("SELECT bytes_used FROM library_usage WHERE user_id = $1",
                               user) == 50 * 24
