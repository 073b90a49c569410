"""Expired workspace assets deleted per second, rows and files, by
``worker.maintenance.expire_assets`` (locked batches of ``GENQ_CLEANUP_BATCH_SIZE``, files first);
baseline: plain ``os.unlink`` of the same number of files and one ``DELETE`` of as many rows."""

from __future__ import annotations

import asyncio
import os
import time

from bench import seed
from bench.env import BenchEnv
from bench.report import Row
from shared.storage import LocalStorage
from worker.maintenance import expire_assets


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        os.unlink(path)


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """genq's task, then the plain deletes."""
    n = 2000 if quick else 20000
    pool = env.db()
    accounts = await seed.users(pool, 50, 0)
    user_ids = [a.id for a in accounts]
    root = env.storage_dir / "cleanup"

    await seed.expired_assets(pool, root / "genq", user_ids, n)
    report = await expire_assets(pool, LocalStorage(root / "genq"), env.settings.cleanup_batch_size)
    if report.counts.get("rows_deleted") != n or report.counts.get("files_deleted") != n:
        raise RuntimeError(f"cleanup: expected {n} rows and files deleted, got {report.counts}")
    genq_s = report.duration_s

    ids = await seed.expired_assets(pool, root / "bare", user_ids, n)
    paths = [str(root / "bare" / r["storage_key"]) for r in await pool.fetch(
        "SELECT storage_key FROM workspace_assets WHERE id = ANY($1::uuid[])", ids)]
    started = time.perf_counter()
    await asyncio.to_thread(_unlink_all, paths)
    await pool.execute("DELETE FROM workspace_assets WHERE id = ANY($1::uuid[])", ids)
    bare_s = time.perf_counter() - started

    return [Row(
        "cleanup", "cleanup: expired assets deleted (row + file)", n / genq_s, n / bare_s,
        "assets/s", target="none (reported)",
        notes={"assets": n, "batch_size": env.settings.cleanup_batch_size,
               "genq_s": genq_s, "bare_s": bare_s},
    )]
