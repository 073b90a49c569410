"""Helpers for tests that run whole genq processes on the embedded default."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from shared.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any GENQ_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(extra)
    return env


def embedded_pids(data_dir: Path) -> list[int]:
    """The pids of the embedded PostgreSQL and valkey servers under ``data_dir``, if running."""
    pids = []
    pg_pid = EmbeddedPostgres(data_dir / "postgres").data / "postmaster.pid"
    vk_pid = data_dir / "valkey" / "valkey.pid"
    for path in (pg_pid, vk_pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(path.read_text().splitlines()[0]))
    return pids


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
