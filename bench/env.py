"""The services and processes one benchmark run uses.

Services: the configured ``GENQ_DATABASE_URL`` / ``GENQ_REDIS_URL``, or the embedded servers under
the data folder (started if needed, stopped at the end if this run started them). With the
embedded PostgreSQL every run gets a fresh ``genq_bench`` database, so table sizes do not drift
from run to run; a configured database is used as it is. Every scenario gets its own queue name.

Processes are real ones (``python -m genq api|worker``, ``python -m bench.bare_app``,
``python -m bench.bare_arq``), each with its output in ``<work_dir>/logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from arq.connections import ArqRedis

from bench import cpu
from shared.db import Pool, create_pool
from shared.embedded import free_port
from shared.queue import create_arq_pool
from shared.services import prepare_database, running_services
from shared.settings import Settings

BENCH_DATABASE = "genq_bench"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


@dataclass
class Proc:
    """A child process under test."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far (VmHWM), in MB (10^6 bytes)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
        raise RuntimeError("no VmHWM in /proc status")

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it hangs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        """The end of its output, for error messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _fresh_database(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    finally:
        await conn.close()
    return _with_database(url, BENCH_DATABASE)


async def _local_postmaster(url: str) -> int | None:
    """The pid of the configured PostgreSQL's postmaster when it runs on this machine (the
    parent of this connection's backend), so that only its processes count as PostgreSQL's
    CPU and not those of other servers here; None when it cannot be seen."""
    conn = await asyncpg.connect(url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        raw = Path(f"/proc/{backend}/stat").read_text()
    except OSError:
        return None  # another machine or container
    finally:
        await conn.close()
    if not raw[raw.index("(") + 1: raw.rindex(")")].startswith("postgres"):
        return None
    return int(raw[raw.rindex(")") + 2:].split()[1])


@dataclass
class BenchEnv:
    """Services, a pool and a Redis client for the harness, and the processes it started."""

    settings: Settings
    work_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    database_url: str = ""
    redis_url: str = ""
    pool: Pool | None = None
    redis: ArqRedis | None = None
    procs: list[Proc] = field(default_factory=list)

    @property
    def storage_dir(self) -> Path:
        """Where the worker under test stores outputs."""
        return self.work_dir / "storage"

    @property
    def embedded_database(self) -> bool:
        """Whether PostgreSQL is the embedded one (then the run has its own database)."""
        return self.settings.database_url is None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BenchEnv]:
        """For the block: the services (started or attached to), a fresh migrated bench
        database, a pool and a Redis client; afterwards every process this run started is
        stopped, the clients closed and the servers this run started stopped."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        async with running_services(self.settings, prepare=False) as services:
            try:
                self.database_url = services.database_url
                owned = {pid: "postgres" if name == "postgres" else "redis"
                         for name, pid in services.server_pids.items()}
                if "postgres" not in services.server_pids:
                    postmaster = await _local_postmaster(self.database_url)
                    if postmaster is not None:
                        owned[postmaster] = "postgres"
                cpu.own_servers(owned)
                if self.embedded_database:
                    self.database_url = await _fresh_database(self.database_url)
                self.redis_url = services.redis_url
                await prepare_database(self.database_url, self.settings)
                self.pool = await create_pool(self.database_url, min_size=2, max_size=20)
                self.redis = await create_arq_pool(self.redis_url)
                yield self
            finally:
                for proc in self.procs:
                    proc.stop()
                self.procs.clear()
                if self.redis is not None:
                    await self.redis.aclose()
                if self.pool is not None:
                    await self.pool.close()

    def db(self) -> Pool:
        """The harness's pool."""
        assert self.pool is not None
        return self.pool

    def r(self) -> ArqRedis:
        """The harness's Redis client."""
        assert self.redis is not None
        return self.redis

    def queue(self, scenario: str) -> str:
        """A queue name of this run and scenario."""
        return f"bench:{self.run_id}:{scenario}"

    def genq_env(self, queue: str, **extra: str) -> dict[str, str]:
        """The environment of a genq process under test: this one's (so ``GENQ_*`` tuning
        applies), with the run's services, storage and queue."""
        env = dict(os.environ)
        env.update(
            GENQ_DATABASE_URL=self.database_url,
            GENQ_REDIS_URL=self.redis_url,
            GENQ_DATA_DIR=str(self.settings.data_dir.resolve()),
            GENQ_STORAGE_DIR=str(self.storage_dir.resolve()),
            GENQ_QUEUE_NAME=queue,
            GENQ_ADMIN_TOKEN=ADMIN_TOKEN,
            GENQ_LOG_FORMAT="json",
        )
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``python <args>`` with its output in the logs folder."""
        log_dir = self.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        self._profile(proc)
        return proc

    def _profile(self, proc: Proc) -> None:
        """With ``BENCH_PROFILE=<dir>``, sample the process with py-spy until it exits
        (collapsed stacks in ``<dir>/<name>-<pid>.txt``; py-spy must be installed)."""
        out_dir = os.environ.get("BENCH_PROFILE")
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not out_dir or not Path(py_spy).exists():
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            [py_spy, "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw",
             "--nonblocking", "--subprocesses", "-o",
             str(Path(out_dir) / f"{proc.name}-{proc.pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self, proc: Proc) -> None:
        """Stop one process and forget it."""
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    async def genq_api(self, queue: str, **extra: str) -> tuple[Proc, str]:
        """A ready ``genq api`` process and its base URL."""
        port = free_port()
        proc = self.spawn("genq-api", ["-m", "genq", "api", "--host", "127.0.0.1",
                                       "--port", str(port)], self.genq_env(queue, **extra))
        base = f"http://127.0.0.1:{port}"
        await wait_http(proc, f"{base}/readyz")
        return proc, base

    async def bare_app(self, *, floor: bool = False, group_commit: bool = False,
                       rows_queue: str | None = None) -> tuple[Proc, str]:
        """A ready bare Starlette app (or, with ``floor``, the intake floor of
        ``bench/floor.py``, with as many connections as genq's pool; with ``rows_queue`` too,
        the floor with genq's rows, queueing on it) and its base URL."""
        port = free_port()
        args = ["-m", "bench.bare_app", "--port", str(port)]
        if floor:
            args += ["--database-url", self.database_url,
                     "--pool-size", str(self.settings.db_pool_max_size)]
            if group_commit:
                args.append("--group-commit")
            if rows_queue is not None:
                args += ["--redis-url", self.redis_url, "--queue", rows_queue]
        proc = self.spawn("floor-app" if floor else "bare-app", args)
        base = f"http://127.0.0.1:{port}"
        await wait_http(proc, f"{base}/v1/jobs", method="POST")
        return proc, base

    async def genq_worker(self, queue: str, name: str = "genq-worker", **extra: str) -> Proc:
        """A ready ``genq worker`` process on ``queue`` (its log named after ``name``)."""
        proc = self.spawn(name, ["-m", "genq", "worker"], self.genq_env(queue, **extra))
        await wait_worker(self.r(), proc, queue)
        return proc

    async def bare_worker(self, queue: str, *, max_jobs: int, poll_delay_s: float,
                          floor: bool = False, replicate_url: str | None = None) -> Proc:
        """A ready bare arq worker on ``queue`` (with ``floor``, able to run the worker floor
        of ``bench/floor.py``, with as many connections as genq's pool; with
        ``replicate_url``, the provider floor against that Replicate, with as many
        connections as genq's provider pool)."""
        args = ["-m", "bench.bare_arq", "--redis-url", self.redis_url, "--queue", queue,
                "--max-jobs", str(max_jobs), "--poll-delay", str(poll_delay_s)]
        name = "bare-arq"
        if floor:
            name = "floor-arq"
            args += ["--database-url", self.database_url,
                     "--storage-dir", str((self.storage_dir / "floor").resolve()),
                     "--pool-size", str(self.settings.db_pool_max_size)]
        if replicate_url is not None:
            name = "provider-floor-arq"
            args += ["--replicate-url", replicate_url,
                     "--connections", str(self.settings.provider_max_connections)]
        proc = self.spawn(name, args)
        await wait_worker(self.r(), proc, queue)
        return proc


async def wait_http(proc: Proc, url: str, method: str = "GET") -> None:
    """Wait until ``url`` answers below 500."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.request(method, url)).status_code < 500:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not answer at {url}")


async def wait_worker(redis: ArqRedis, proc: Proc, queue: str) -> None:
    """Wait for the worker's first health check: arq writes it when its poll loop starts."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        if await redis.exists(f"{queue}:health-check"):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not start polling {queue}")
