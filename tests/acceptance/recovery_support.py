"""Real genq processes and the end-state checks shared by the crash-recovery acceptance tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.db import Pool
from shared.storage import LocalStorage
from tests.factories import funded_user, queued_job

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "canceled")


async def funded_jobs(
    pool: Pool, accounts: int, per_account: int, credits: int
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """``accounts`` users holding ``credits``, each with ``per_account`` queued jobs of
    ``local/sketch`` asking for 1, 2, 1, 2, ... outputs (so a wrong capture amount shows)."""
    users = [await funded_user(pool, credits) for _ in range(accounts)]

    async def jobs_of(user: uuid.UUID) -> list[uuid.UUID]:
        return [await queued_job(pool, user, num_outputs=1 + i % 2) for i in range(per_account)]

    per_user = await asyncio.gather(*(jobs_of(u) for u in users))
    return users, [j for jobs in per_user for j in jobs]


def redis_db_url(url: str, db: int) -> str:
    """The same Redis server, another logical database (so a FLUSHDB touches nobody else)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def process_env(**genq: str) -> dict[str, str]:
    """This environment minus every ``GENQ_*``, plus ``genq`` (keys without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "REPLICATE_"))}
    env.update({f"GENQ_{k.upper()}": v for k, v in genq.items()})
    return env


class GenqProcess:
    """``python -m genq <command>`` in its own process group, its output in a file."""

    def __init__(self, command: list[str], env: dict[str, str], logdir: Path, name: str) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genq", *command], env=env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill_group(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status of the first."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines (GENQ_LOG_FORMAT=json)."""
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


class Processes:
    """Every process a test started; whatever is still alive is killed at the end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[GenqProcess] = []

    def start(self, command: list[str], env: dict[str, str], name: str) -> GenqProcess:
        p = GenqProcess(command, env, self.logdir, name)
        self.started.append(p)
        return p

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-chars:]}" for p in self.started)

    def assert_alive(self) -> None:
        for p in self.started:
            code = p.proc.poll()
            assert code is None or code == -signal.SIGKILL, (
                f"{p.name} exited with {code}\n{self.tails()}")

    def close(self) -> None:
        for p in self.started:
            if p.proc.poll() is None:
                p.kill_group()


async def status_counts(pool: Pool, job_ids: list[uuid.UUID]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM generation_jobs WHERE id = ANY($1::uuid[])"
        " GROUP BY status", job_ids,
    )
    return {r["status"]: r["n"] for r in rows}


async def wait_all_terminal(
    pool: Pool, job_ids: list[uuid.UUID], procs: Processes, deadline_s: float
) -> float:
    """Poll Postgres until every job is terminal; seconds it took. Fails at the deadline."""
    started = time.monotonic()
    while True:
        counts = await status_counts(pool, job_ids)
        if sum(counts.get(s, 0) for s in TERMINAL) == len(job_ids):
            return time.monotonic() - started
        procs.assert_alive()
        if time.monotonic() - started > deadline_s:
            raise AssertionError(
                f"not terminal after {deadline_s:.0f} s: {counts}\n{procs.tails()}")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Settled:
    """What the ledger says about one job's reservation."""

    job_id: uuid.UUID
    amount: int
    status: str
    captured: int
    reserves: int
    captures: int
    refunds: int
    captured_in_ledger: int


async def settlements(pool: Pool, job_ids: list[uuid.UUID]) -> list[Settled]:
    """Per job: its reservation and how many reserve/capture/refund ledger rows point at it."""
    rows = await pool.fetch(
        """
        SELECT j.id AS job_id, r.amount, r.status, r.captured,
               count(*) FILTER (WHERE l.kind = 'reserve') AS reserves,
               count(*) FILTER (WHERE l.kind = 'capture') AS captures,
               count(*) FILTER (WHERE l.kind = 'refund') AS refunds,
               coalesce(-sum(l.reserved_delta) FILTER (WHERE l.kind = 'capture'), 0)
                   AS captured_in_ledger
        FROM generation_jobs j
        JOIN credit_reservations r ON r.id = j.reservation_id
        LEFT JOIN credit_ledger l ON l.reservation_id = r.id
        WHERE j.id = ANY($1::uuid[])
        GROUP BY j.id, r.amount, r.status, r.captured
        """,
        job_ids,
    )
    return [Settled(**dict(r.items())) for r in rows]


async def assert_accounts_balanced(pool: Pool, user_ids: list[uuid.UUID]) -> None:
    """For every account: balance >= 0, balance == sum(ledger), reserved == 0, nothing open."""
    rows = await pool.fetch(
        """
        SELECT a.user_id, a.balance, a.reserved,
               (SELECT coalesce(sum(l.amount), 0) FROM credit_ledger l
                WHERE l.user_id = a.user_id) AS ledger_sum,
               (SELECT count(*) FROM credit_reservations r
                WHERE r.user_id = a.user_id AND r.status = 'open') AS open_reservations
        FROM credit_accounts a WHERE a.user_id = ANY($1::uuid[])
        """,
        user_ids,
    )
    assert len(rows) == len(user_ids)
    for r in rows:
        assert r["balance"] >= 0, dict(r.items())
        assert r["balance"] == r["ledger_sum"], dict(r.items())
        assert (r["reserved"], r["open_reservations"]) == (0, 0), dict(r.items())


async def assert_assets_on_disk(
    pool: Pool, storage: LocalStorage, job_ids: list[uuid.UUID]
) -> None:
    """Every succeeded job has exactly ``num_outputs`` asset rows, each with its file."""
    rows = await pool.fetch(
        """
        SELECT j.id, j.num_outputs, j.outputs_made,
               array_agg(a.storage_key ORDER BY a.asset_index)
                   FILTER (WHERE a.id IS NOT NULL) AS paths,
               array_agg(a.asset_index ORDER BY a.asset_index)
                   FILTER (WHERE a.id IS NOT NULL) AS indexes
        FROM generation_jobs j LEFT JOIN workspace_assets a ON a.job_id = j.id
        WHERE j.id = ANY($1::uuid[]) AND j.status = 'succeeded'
        GROUP BY j.id, j.num_outputs, j.outputs_made
        """,
        job_ids,
    )
    for r in rows:
        paths = r["paths"] or []
        assert r["outputs_made"] == r["num_outputs"], dict(r.items())
        assert r["indexes"] == list(range(r["num_outputs"])), dict(r.items())
        for key in paths:
            assert storage.path(key).is_file(), key
