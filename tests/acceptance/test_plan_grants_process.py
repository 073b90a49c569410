"""Periodic plan grants with real `genq scheduler` processes: two run at once, the one granting
is SIGKILLed in the middle of its run, and the clock is moved across the end of a day and of a
month (GENQ_PLAN_CLOCK_OFFSET_S, no waiting): every user gets exactly one grant per period,
and after a downtime the current period only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.settings import Settings
from tests.acceptance.recovery_support import Processes, process_env
from worker.scheduler import _lock_id

DAILY_USERS = 3000
MONTHLY_USERS = 200
PLANS = """
[[plans]]
name = "daily"
credits_per_period = 10
period = "day"

[[plans]]
name = "monthly"
credits_per_period = 300
period = "month"
"""
# Long enough that a run is cut in the middle: batches of 50 users, one grant each.
BATCH = 50
GRANT_LOCK = _lock_id("grant-plan-credits")


async def _users(pool: Pool, plan: str, n: int) -> list[uuid.UUID]:
    tag = uuid.uuid4().hex[:8]
    rows = await pool.fetch(
        "INSERT INTO users (email, plan) SELECT $1 || '-' || g || '@example.com', $2"
        " FROM generate_series(1, $3) AS g RETURNING id", f"{plan}-{tag}", plan, n)
    ids = [r["id"] for r in rows]
    await pool.execute("INSERT INTO credit_accounts (user_id) SELECT unnest($1::uuid[])", ids)
    return ids


async def _granted(pool: Pool, key: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE kind = 'grant' AND idempotency_key = $1", key))


def _offset_to(at: datetime) -> str:
    """GENQ_PLAN_CLOCK_OFFSET_S that puts a scheduler's clock at ``at`` now."""
    return str(round(at.timestamp() - time.time()))


async def _wait(pool: Pool, procs: Processes, want: dict[str, int],
                timeout_s: float = 120) -> None:
    """Poll until each key has as many grants as ``want`` says."""
    deadline = time.monotonic() + timeout_s
    while (got := {key: await _granted(pool, key) for key in want}) != want:
        procs.assert_alive()
        assert time.monotonic() < deadline, f"grants {got}, wanted {want}\n{procs.tails()}"
        await asyncio.sleep(0.2)


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _lock_holder_port(pool: Pool) -> int | None:
    """The client port of the connection holding the grant task's advisory lock."""
    port = await pool.fetchval(
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1", GRANT_LOCK)
    return None if port is None else int(port)


async def _cut_mid_run(pool: Pool, procs: Processes, env: dict[str, str], name: str,
                       want: dict[str, int]) -> None:
    """Two schedulers; once a grant run is under way, SIGKILL the one making it."""
    both = [procs.start(["scheduler"], env, f"{name}-{i}") for i in range(2)]
    key, n = next(iter(want.items()))
    deadline = time.monotonic() + 120
    while True:
        procs.assert_alive()
        assert time.monotonic() < deadline, procs.tails()
        granted = await _granted(pool, key)
        port = await _lock_holder_port(pool)
        if port is not None and 0 < granted < n:
            holder = [p for p in both if port in _local_ports(p.proc.pid)]
            if holder:
                break
        await asyncio.sleep(0.01)
    holder[0].kill_group()
    at_kill = await _granted(pool, key)
    # It died in the middle of its run, with the other scheduler running.
    assert 0 < at_kill < n, at_kill
    assert [p.proc.poll() for p in both if p is not holder[0]] == [None]


async def _keys(pool: Pool, users: list[uuid.UUID]) -> dict[tuple[str, ...], int]:
    """How many users have each list of plan grant keys (oldest first)."""
    rows = await pool.fetch(
        "SELECT u, coalesce(array_agg(l.idempotency_key ORDER BY l.id)"
        "  FILTER (WHERE l.id IS NOT NULL), '{}') AS keys"
        " FROM unnest($1::uuid[]) AS u LEFT JOIN credit_ledger l"
        "  ON l.user_id = u AND l.kind = 'grant' AND l.idempotency_key LIKE 'plan:%'"
        " GROUP BY u", users)
    counts: dict[tuple[str, ...], int] = {}
    for r in rows:
        counts[tuple(r["keys"])] = counts.get(tuple(r["keys"]), 0) + 1
    return counts


@pytest.mark.slow
async def test_two_schedulers_one_killed_mid_run_one_grant_per_user_and_period(
    pool: Pool, settings: Settings, private_redis_url: str, procs: Processes, tmp_path: Path
) -> None:
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(PLANS)
    async with pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))
    daily = await _users(pool, "daily", DAILY_USERS)
    monthly = await _users(pool, "monthly", MONTHLY_USERS)
    free = await _users(pool, "free", 10)

    def env(at: datetime) -> dict[str, str]:
        return process_env(
            database_url=str(settings.database_url), redis_url=private_redis_url,
            data_dir=str(settings.data_dir), queue_name=settings.queue_name,
            plans_file=str(plans_file), log_format="json", db_pool_min_size="1",
            sweep_interval_s="1", cleanup_batch_size=str(BATCH),
            plan_clock_offset_s=_offset_to(at))

    # Midday on the last day of March: the day's grants and March's.
    march = {"plan:daily:2026-03-31": DAILY_USERS, "plan:monthly:2026-03-01": MONTHLY_USERS}
    await _cut_mid_run(pool, procs, env(datetime(2026, 3, 31, 12, tzinfo=UTC)), "march", march)
    await _wait(pool, procs, march)
    procs.close()

    # The clock moves past midnight into April: a new day and a new month, granted while a
    # scheduler is killed in the middle of it again.
    april = {"plan:daily:2026-04-01": DAILY_USERS, "plan:monthly:2026-04-01": MONTHLY_USERS}
    await _cut_mid_run(pool, procs, env(datetime(2026, 4, 1, 0, 0, 5, tzinfo=UTC)), "april",
                       april)
    await _wait(pool, procs, april)
    procs.close()

    # Down for five days: the day it comes back is granted once, the missed days never, and
    # April is not granted again.
    back = datetime(2026, 4, 6, 9, tzinfo=UTC)
    procs.start(["scheduler"], env(back), "back-a")
    procs.start(["scheduler"], env(back), "back-b")
    await _wait(pool, procs, {"plan:daily:2026-04-06": DAILY_USERS})
    # Another few ticks of both: nothing more.
    await asyncio.sleep(3)
    procs.close()

    assert await _keys(pool, daily) == {
        ("plan:daily:2026-03-31", "plan:daily:2026-04-01", "plan:daily:2026-04-06"): DAILY_USERS}
    assert await _keys(pool, monthly) == {
        ("plan:monthly:2026-03-01", "plan:monthly:2026-04-01"): MONTHLY_USERS}
    assert await _keys(pool, free) == {(): 10}
    balances = await pool.fetch(
        "SELECT a.balance, count(*) AS n FROM credit_accounts a WHERE a.user_id = ANY($1)"
        " GROUP BY a.balance", daily + monthly)
    assert {r["balance"]: r["n"] for r in balances} == {30: DAILY_USERS, 600: MONTHLY_USERS}
