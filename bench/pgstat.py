"""The statement profile of one measurement, when the database has ``pg_stat_statements``.

Optional: with PostgreSQL started with ``shared_preload_libraries=pg_stat_statements`` (see
``bench/pgcluster.sh``), :class:`Profile` resets the statistics before a measurement and, after
it, lists the statements that took the most time, with calls and rows per job and mean time,
and PostgreSQL's CPU by backend type (``pg_stat_activity.backend_type``, CPU from ``/proc``).
Without the extension it records nothing and costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench import cpu
from shared.db import Pool

TOP = 15
QUERY_CHARS = 160

_TOP_SQL = """
SELECT s.toplevel, s.calls, s.rows, s.total_exec_time, s.mean_exec_time, s.query
FROM pg_stat_statements s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.total_exec_time DESC
LIMIT $1
"""


async def _loaded(pool: Pool) -> bool:
    libraries = await pool.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "pg_stat_statements" not in str(libraries):
        return False
    try:
        await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except asyncpg.PostgresError:
        return False  # not allowed to create it here
    return True


async def _backend_types(pool: Pool) -> dict[int, str]:
    rows = await pool.fetch("SELECT pid, backend_type FROM pg_stat_activity")
    return {row["pid"]: row["backend_type"] or "other" for row in rows}


def _trimmed(query: str) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"--[^\n]*", " ", query)).strip()
    return text if len(text) <= QUERY_CHARS else text[: QUERY_CHARS - 3] + "..."


@dataclass
class Profile:
    """One measurement's statement profile (empty when ``pg_stat_statements`` is missing)."""

    pool: Pool
    enabled: bool = False
    _before: cpu.Snapshot | None = None
    _types: dict[int, str] = field(default_factory=dict)

    async def start(self) -> None:
        """Reset the statistics (if the extension is there) and note each backend's CPU."""
        self.enabled = await _loaded(self.pool)
        if not self.enabled:
            return
        await self.pool.execute("SELECT pg_stat_statements_reset()")
        self._types = await _backend_types(self.pool)
        self._before = cpu.Snapshot.take()

    async def notes(self, jobs: int) -> dict[str, Any]:
        """``{"pg_stat_statements": the profile}`` for a row's notes, or nothing without the
        extension. The profile: the top statements by total time (calls and rows divided by
        ``jobs``; ``toplevel`` false: run inside a function or trigger, its time also counted
        in the caller's) and PostgreSQL CPU per job, in microseconds, by backend type (the
        harness's own backends count as client backends; backends that ended during the
        measurement are not counted)."""
        if not self.enabled or self._before is None:
            return {}
        after = cpu.Snapshot.take()
        types = {**self._types, **await _backend_types(self.pool)}
        rows = await self.pool.fetch(_TOP_SQL, TOP)
        statements = [
            {"total_ms": round(r["total_exec_time"], 1), "mean_ms": round(r["mean_exec_time"], 4),
             "calls_per_job": round(r["calls"] / jobs, 3),
             "rows_per_job": round(r["rows"] / jobs, 3),
             "toplevel": r["toplevel"], "query": _trimmed(r["query"])}
            for r in rows
        ]
        by_type: dict[str, float] = {}
        for pid, comm, ppid, delta in cpu.process_deltas(self._before, after):
            if cpu.component(pid, comm, ppid) != "postgres":
                continue
            parent = after.by_pid.get(ppid)
            kind = types.get(pid) or ("postmaster" if parent is None
                                      or not parent[0].startswith("postgres") else "other")
            by_type[kind] = by_type.get(kind, 0.0) + delta / jobs * 1e6
        return {"pg_stat_statements": {
            "statements": statements,
            "cpu_us_per_job_by_backend_type": {k: round(v, 1) for k, v in
                                                sorted(by_type.items())}}}
