"""Where the machine's CPU goes during a measurement: the process under test, PostgreSQL, the
Redis server, and the whole machine (every core, from ``/proc/stat``), read from ``/proc``.

Divided by a throughput, these give the CPU each request costs per component: the profile that
says whether a target is reachable at all on this machine.

When the run started its own servers (:func:`own_servers`), only they and their children
count as PostgreSQL and Redis: other servers on a shared machine are not this run's cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# pid -> component ("postgres", "redis") of the servers this run measures; empty: by name.
_OWN: dict[int, str] = {}


def own_servers(pids: dict[int, str]) -> None:
    """Count only these servers (pid -> ``postgres`` or ``redis``) and their children."""
    _OWN.clear()
    _OWN.update(pids)


def _machine_s() -> tuple[float, float]:
    """CPU seconds of all cores since boot: busy (everything but idle and iowait) and, of
    that, stolen (a virtual machine's cores waiting for the host's: every process on them
    runs slower, and its own CPU seconds grow with it)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:8]) - idle) / _TICKS, steal / _TICKS


def _process_cpu_s() -> dict[int, tuple[str, float, int]]:
    """(command, user + system CPU seconds, parent pid) of every process now running."""
    found: dict[int, tuple[str, float, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        found[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / _TICKS,
                                  int(fields[1]))
    return found


def component(pid: int, comm: str, ppid: int) -> str | None:
    """``postgres``, ``redis`` or None: which service a process counts for."""
    own = _OWN.get(pid) or _OWN.get(ppid)
    if own is not None:
        return own
    if comm.startswith("postgres"):
        by_name = "postgres"
    elif comm.startswith(("valkey", "redis")):
        by_name = "redis"
    else:
        return None
    # Another server of a kind this run has its own of: not this run's.
    return None if by_name in _OWN.values() else by_name


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far: the process under test, each service, the machine."""

    at: float
    machine_s: float
    steal_s: float
    by_pid: dict[int, tuple[str, float, int]]

    @classmethod
    def take(cls) -> Snapshot:
        """Read ``/proc`` now."""
        machine_s, steal_s = _machine_s()
        return cls(time.monotonic(), machine_s, steal_s, _process_cpu_s())


def process_deltas(before: Snapshot, after: Snapshot) -> Iterator[tuple[int, str, int, float]]:
    """(pid, command, parent pid, CPU seconds used since ``before``) of every process running
    at ``after``; one that started meanwhile (or whose pid was reused) counts from zero."""
    for pid, (comm, cpu_s, ppid) in after.by_pid.items():
        start = before.by_pid.get(pid)
        yield pid, comm, ppid, cpu_s - (start[1] if start is not None and start[0] == comm else 0.0)


def cores_used(before: Snapshot, after: Snapshot, server_pid: int) -> dict[str, float]:
    """Average cores each component used between two snapshots (see :func:`cpu_seconds`)."""
    elapsed = after.at - before.at
    return {name: s / elapsed for name, s in cpu_seconds(before, after, server_pid).items()}


def cpu_seconds(before: Snapshot, after: Snapshot, server_pid: int) -> dict[str, float]:
    """CPU seconds each component used between two snapshots: ``server`` (the process under
    test), ``postgres`` and ``redis`` (every process of theirs, backends included), ``machine``
    (all cores, everything, the load generator included) and ``steal`` (of the machine's, the
    time its cores waited for the host: a run slowed by the host shows here)."""
    used = {"server": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid, comm, ppid, delta in process_deltas(before, after):
        if pid == server_pid:
            used["server"] += delta
        elif (group := component(pid, comm, ppid)) is not None:
            used[group] += delta
    used["machine"] = after.machine_s - before.machine_s
    used["steal"] = after.steal_s - before.steal_s
    return used
