"""Run the whole system on one machine: services, then API, worker and scheduler processes.

``genq up`` and ``genq demo`` use this. The children are ordinary ``genq api`` / ``genq worker``
/ ``genq scheduler`` processes given the resolved service URLs, so they behave exactly as they do
when deployed one by one. Stopping sends SIGTERM to each child, waits, then stops the embedded
servers this process started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.embedded import Services, free_port
from shared.logging import get_logger
from shared.services import resolve_services
from shared.settings import Settings

log = get_logger(__name__)

CHILD_STOP_TIMEOUT_S = 30.0


@dataclass
class Stack:
    """The running processes of one genq installation."""

    settings: Settings
    host: str
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    services: Services | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where the API answers."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def _env(self) -> dict[str, str]:
        assert self.services is not None
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            GENQ_DATABASE_URL=self.services.database_url,
            GENQ_REDIS_URL=self.services.redis_url,
            GENQ_DATA_DIR=str(self.settings.data_dir),
            GENQ_STORAGE_DIR=str(self.settings.storage_root.resolve()),
        )
        return env

    def start(self) -> None:
        """Start services (embedded where unset) and the three processes."""
        self.services = resolve_services(self.settings)
        env = self._env()
        commands = {
            "api": ["api", "--host", self.host, "--port", str(self.port)],
            "worker": ["worker"],
            "scheduler": ["scheduler"],
        }
        try:
            # Migrate once before the children start, so they do not race to do it.
            subprocess.run(
                [sys.executable, "-m", "genq", "migrate"], env=env, check=True,
                stdout=subprocess.DEVNULL,
            )
            for name, args in commands.items():
                out: int | object = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    out = (self.log_dir / f"{name}.log").open("ab")
                self.children[name] = subprocess.Popen(  # noqa: S603
                    [sys.executable, "-m", "genq", *args], env=env,
                    stdout=out, stderr=subprocess.STDOUT if out is not None else None,  # type: ignore[arg-type]
                    start_new_session=True,
                )
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/readyz`` answers 200, or raise if a child died or time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = self.dead_child()
            if dead is not None:
                raise RuntimeError(f"genq {dead} exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the API at {self.base_url} was not ready in {timeout_s:.0f}s")

    def dead_child(self) -> str | None:
        """The name of a child that has exited, if any."""
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        """SIGTERM every child, wait, SIGKILL stragglers; then stop embedded servers."""
        for proc in self.children.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        for name, proc in self.children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child_killed", process=name)
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.services is not None:
            self.services.stop()
            self.services = None


def pick_port(port: int) -> int:
    """``port``, or a free one if 0."""
    return port or free_port()
