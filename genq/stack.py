"""Run the whole system on one machine: services, then API, worker and scheduler processes.

``genq up`` and ``genq demo`` use this. The children are ordinary ``genq api`` / ``genq worker``
/ ``genq scheduler`` processes given the resolved service URLs, so they behave exactly as they do
when deployed one by one. Stopping sends SIGTERM to each child, waits, then stops the embedded
servers this process started. A stop asked for during start-up (:attr:`Stack.stop_requested`,
set by ``genq up``'s SIGINT/SIGTERM handler) is acted on at once, not when the API is ready.
With a log folder, each child's output (``genq migrate`` included) goes to ``<name>.log`` there.

``genq up`` supervises them (:meth:`Stack.supervise`): a child that exits on its own is started
again after a backoff that doubles with each recent death (0.5 s, 1 s, 2 s, ... up to 30 s), and
each death and restart is logged; a child that dies ``GIVE_UP_DEATHS`` times within
``GIVE_UP_WINDOW_S`` is not restarted again, and :class:`ChildFailed` says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from shared.embedded import Services, free_port
from shared.errors import GenqError
from shared.logging import get_logger
from shared.services import resolve_services
from shared.settings import Settings

log = get_logger(__name__)

CHILD_STOP_TIMEOUT_S = 30.0
RESTART_BACKOFF_BASE_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
GIVE_UP_DEATHS = 5
GIVE_UP_WINDOW_S = 60.0


class ChildFailed(GenqError):
    """A genq process of the stack exited and will not be started again."""

    code = "child_failed"


class StartCancelled(Exception):
    """A stop was asked for (:attr:`Stack.stop_requested`) while the stack was starting."""


def describe_exit(returncode: int) -> str:
    """``exit code 2`` or ``signal SIGKILL``, from a ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def restart_delay(recent_deaths: int) -> float:
    """How long to wait before starting a child again that died ``recent_deaths`` times lately."""
    return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_BASE_S * 2 ** (recent_deaths - 1)))


@dataclass
class Stack:
    """The running processes of one genq installation."""

    settings: Settings
    host: str
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    services: Services | None = None
    # Set it (a signal handler may) to make start() and wait_ready() give up promptly with
    # StartCancelled; the caller then calls stop().
    stop_requested: bool = False
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: The port each child serves /metrics on (with GENQ_METRICS_PORT set): the worker that
    #: port, the scheduler the next (0: a free one each).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    _child_env: dict[str, str] = field(default_factory=dict, repr=False)
    _commands: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _deaths: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _restarts: dict[str, int] = field(default_factory=dict, repr=False)
    _restart_at: dict[str, float] = field(default_factory=dict, repr=False)

    def metrics_urls(self) -> dict[str, str]:
        """Where each process serves /metrics: the API on its own port (admin token), the
        worker and the scheduler on theirs (only with GENQ_METRICS_PORT set)."""
        host = self.settings.metrics_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        urls = {"api": f"{self.base_url}/metrics"}
        urls |= {name: f"http://{host}:{port}/metrics"
                 for name, port in self.metrics_ports.items()}
        return urls

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
        """Start services (embedded where unset), migrate, and start the three processes.

        Raises :class:`StartCancelled` if :attr:`stop_requested` was set meanwhile, with
        everything it had started stopped again.
        """
        self.services = resolve_services(self.settings)
        self._child_env = self._env()
        self._commands = {
            "api": ["api", "--host", self.host, "--port", str(self.port)],
            "worker": ["worker"],
            "scheduler": ["scheduler"],
        }
        port = self.settings.metrics_port
        if port is not None:
            self.metrics_ports = {"worker": port or free_port(),
                                  "scheduler": port + 1 if port else free_port()}
        try:
            self._check_stop()
            self._migrate()
            for name in self._commands:
                self._check_stop()
                self._spawn(name)
        except BaseException:
            self.stop()
            raise

    def _check_stop(self) -> None:
        if self.stop_requested:
            raise StartCancelled

    def _log_file(self, name: str) -> BinaryIO | None:
        """``<log_dir>/<name>.log`` opened for appending; None without a log folder (the
        output then goes to this process's own)."""
        if self.log_dir is None:
            return None
        return os.fdopen(open_log(self.log_dir, name), "ab")

    def _last_words(self, name: str) -> str:
        """``: <its last line> (its output is in <log>)`` for a child whose output went to the
        log folder, else nothing."""
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return (f": {lines[-1]}" if lines else "") + f" (its output is in {path})"

    def _migrate(self) -> None:
        """Run `genq migrate` once before the children start, so they do not race to do it.

        A stop asked for meanwhile interrupts it (SIGINT, as Ctrl-C would); a failure raises
        :class:`ChildFailed` with the last line it wrote when that went to the log folder.
        """
        log_file = self._log_file("migrate")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "genq", "migrate"], env=self._child_env,
                stdout=subprocess.DEVNULL if log_file is None else log_file,
                stderr=None if log_file is None else subprocess.STDOUT,
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child has its own copy
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    self._check_stop()
                else:
                    break
        except BaseException:
            _interrupt(proc)
            raise
        self._check_stop()
        if code != 0:
            raise ChildFailed(
                f"genq migrate failed ({describe_exit(code)}){self._last_words('migrate')}")

    def _spawn(self, name: str) -> None:
        log_file = self._log_file(name)
        try:
            env = dict(self._child_env)
            if name in self.metrics_ports:
                env["GENQ_METRICS_PORT"] = str(self.metrics_ports[name])
            self.children[name] = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "genq", *self._commands[name]], env=env,
                stdout=log_file, stderr=None if log_file is None else subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child has its own copy

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/readyz`` answers 200, or raise if a child died, time ran out or a stop
        was asked for (:class:`StartCancelled`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_stop()
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    raise ChildFailed(f"genq {name} exited during start-up "
                                      f"({describe_exit(code)}){self._last_words(name)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the API at {self.base_url} was not ready in {timeout_s:.0f}s")

    def supervise(self) -> None:
        """Start again, after their backoff, the children that exited; call it every so often.

        Raises :class:`ChildFailed` when one died ``GIVE_UP_DEATHS`` times within
        ``GIVE_UP_WINDOW_S``; the caller then stops everything.
        """
        now = time.monotonic()
        for name, proc in list(self.children.items()):
            due = self._restart_at.get(name)
            if due is not None:
                if now >= due:
                    del self._restart_at[name]
                    self._spawn(name)
                    self._restarts[name] = self._restarts.get(name, 0) + 1
                    log.info("child_restarted", process=name, pid=self.children[name].pid,
                             restarts=self._restarts[name])
                continue
            code = proc.poll()
            if code is None:
                continue
            deaths = self._deaths.setdefault(name, deque())
            deaths.append(now)
            while now - deaths[0] > GIVE_UP_WINDOW_S:
                deaths.popleft()
            how = describe_exit(code)
            if len(deaths) >= GIVE_UP_DEATHS:
                log.error("child_gave_up", process=name, exit=how, exit_code=code,
                          deaths=len(deaths), window_s=GIVE_UP_WINDOW_S)
                raise ChildFailed(
                    f"the {name} process keeps dying ({len(deaths)} times in "
                    f"{GIVE_UP_WINDOW_S:g} s, last: {how}); gave up and stopped everything")
            delay = restart_delay(len(deaths))
            self._restart_at[name] = now + delay
            log.warning("child_died", process=name, exit=how, exit_code=code,
                        restarts=self._restarts.get(name, 0), restart_in_s=delay)

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
        self._restart_at.clear()
        if self.services is not None:
            self.services.stop()
            self.services = None


def open_log(log_dir: Path, name: str) -> int:
    """A descriptor of ``<log_dir>/<name>.log`` opened for appending, the file and the folder
    for genq's user alone (also when an older genq made them readable by all)."""
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_dir.chmod(0o700)
    fd = os.open(log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT ``proc`` (as Ctrl-C would) and wait for it; SIGKILL it if it hangs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=CHILD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pick_port(port: int) -> int:
    """``port``, or a free one if 0."""
    return port or free_port()
