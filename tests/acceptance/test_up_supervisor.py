"""`genq up` as a user runs it: a process of the stack that dies is started again and the system
keeps answering; one that keeps dying makes `genq up` give up, say why and exit non-zero; either
way nothing is left running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.embedded import free_port
from tests.acceptance.stack_support import ROOT, alive, children_of, clean_env, embedded_pids

TOKEN = "supervisor-admin-token-0123456789abcdef"
WAIT_S = 90.0


class Up:
    """A running `genq up`, its output in a file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genq", "up", "--port", str(self.port)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env=clean_env(GENQ_DATA_DIR=str(data_dir), GENQ_ADMIN_TOKEN=TOKEN,
                              GENQ_LOG_FORMAT="json"),
            )
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if event.get("event") == name:
                        found.append(event)
        return found

    def child(self, name: str, *, not_in: frozenset[int] | set[int] = frozenset()) -> int:
        """The pid of the `genq <name>` child, waiting for one not in ``not_in``."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            for pid in children_of(self.proc.pid):
                with contextlib.suppress(OSError):
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if b"genq" in args and args[args.index(b"genq") + 1] == name.encode() \
                            and pid not in not_in and alive(pid):
                        self.seen.add(pid)
                        return pid
            time.sleep(0.05)
        raise AssertionError(f"no genq {name} child appeared\n{self.output()}")

    def ready(self) -> None:
        """Wait until `genq up` said it is up (past start-up, where a death is fatal) and
        ``/readyz`` answers 200."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if "genq is up" in self.output():
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        raise AssertionError(f"genq up was not ready\n{self.output()}")

    def everything(self) -> list[int]:
        """Every process it ran that we saw, and the embedded servers."""
        self.seen.update(children_of(self.proc.pid))
        return sorted(self.seen) + embedded_pids(self.data_dir)


@pytest.fixture
def up(tmp_path: Path, clean_data_dir: Path) -> Iterator[Up]:
    running = Up(clean_data_dir, tmp_path / "up.log")
    yield running
    if running.proc.poll() is None:
        running.proc.send_signal(signal.SIGINT)
        running.proc.wait(WAIT_S)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _funded_user(client: httpx.Client) -> tuple[str, dict[str, str]]:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    user = client.post("/v1/admin/users", headers=admin,
                       json={"email": f"{uuid.uuid4().hex[:8]}@example.com"})
    assert user.status_code == 201, user.text
    grant = client.post(f"/v1/admin/users/{user.json()['id']}/credits", headers=admin,
                        json={"amount": 10, "reason": "test"})
    assert grant.status_code in (200, 201), grant.text
    return user.json()["id"], {"Authorization": f"Bearer {user.json()['api_key']}"}


def _finished(up: Up, client: httpx.Client, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            if job.get("status") in ("succeeded", "failed", "canceled"):
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish\n{up.output()[-6000:]}")


@pytest.fixture
def client(up: Up) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=10) as c:
        yield c


def test_a_killed_worker_or_api_is_started_again_and_the_system_keeps_working(
    up: Up, client: httpx.Client
) -> None:
    up.ready()
    user_id, auth = _funded_user(client)

    worker = up.child("worker")
    os.kill(worker, signal.SIGKILL)
    submitted = client.post("/v1/jobs", headers=auth, json={
        "model": "local/sketch", "prompt": "after the worker died", "num_outputs": 1,
        "params": {}})
    assert submitted.status_code == 202, submitted.text
    job = _finished(up, client, auth, submitted.json()["id"])
    assert job["status"] == "succeeded"
    assert job["cost"]["captured"] == 1
    assert up.child("worker", not_in={worker}) != worker
    assert not alive(worker)

    # The asset the restarted worker wrote is for genq's user alone.
    storage = up.data_dir / "storage"
    files = sorted((storage / user_id / job["id"]).iterdir())
    assert [f.name for f in files] == ["0.png", "0.thumb.webp"]
    assert {_mode(f) for f in files} == {0o600}
    assert _mode(storage / user_id / job["id"]) == 0o700
    assert _mode(storage / user_id) == 0o700
    assert _mode(storage) == 0o700

    api = up.child("api")
    os.kill(api, signal.SIGKILL)
    up.ready()  # /readyz answers again, from a new api process
    assert up.child("api", not_in={api}) != api
    again = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"

    died = {(e["process"], e["exit"]) for e in up.events("child_died")}
    assert died == {("worker", "signal SIGKILL"), ("api", "signal SIGKILL")}
    restarted = {(e["process"], e["restarts"]) for e in up.events("child_restarted")}
    assert restarted == {("worker", 1), ("api", 1)}

    processes = up.everything()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(WAIT_S) == 0, up.output()
    assert "genq stopped" in up.output()
    left = [pid for pid in processes if alive(pid)]
    assert left == [], f"still running after SIGINT: {left}"


def test_a_child_that_keeps_dying_makes_up_give_up_and_stop_everything(up: Up) -> None:
    up.ready()
    killed: set[int] = set()
    while up.proc.poll() is None:
        try:
            worker = up.child("worker", not_in=killed)
        except AssertionError:
            break  # genq up exited while we waited for the next worker
        killed.add(worker)
        os.kill(worker, signal.SIGKILL)
    processes = up.everything()
    code = up.proc.wait(WAIT_S)

    assert code == 1, up.output()
    assert len(killed) == 5, up.output()[-5000:]
    assert ("genq: the worker process keeps dying (5 times in 60 s, last: signal SIGKILL); "
            "gave up and stopped everything") in up.output()
    assert [e["restarts"] for e in up.events("child_restarted")] == [1, 2, 3, 4]
    left = [pid for pid in processes if alive(pid)]
    assert left == [], f"still running after giving up: {left}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{up.url}/readyz", timeout=2)


def _processes_of(data_dir: Path) -> list[int]:
    """Every live process started for the installation in ``data_dir``: `genq up` gives its
    environment (GENQ_DATA_DIR) to its children and to the embedded servers it starts."""
    marker = f"GENQ_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0") \
                        and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def test_ctrl_c_during_start_up_stops_everything_at_once(up: Up) -> None:
    # `genq up` migrates (in a child) after the embedded servers started, before the API.
    up.child("migrate")
    started = _processes_of(up.data_dir)
    assert len(started) >= 3, started  # genq up, genq migrate, the embedded servers
    up.proc.send_signal(signal.SIGINT)
    code = up.proc.wait(WAIT_S)

    assert code == 0, up.output()
    assert "genq is up" not in up.output()  # it did not wait for the API to be ready
    assert up.output().rstrip().endswith("genq stopped"), up.output()
    assert _processes_of(up.data_dir) == []
    assert not any(alive(pid) for pid in started)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{up.url}/readyz", timeout=2)
