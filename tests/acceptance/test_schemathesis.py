"""`genq up` as a subprocess against a bounded, seeded schemathesis run of its own OpenAPI
document: every operation, every check (tests/acceptance/schemathesis.toml), the admin token on
/v1/admin and a funded user's key everywhere else. No server error, no response that breaks its
schema, no status code the document does not list. The README gives the longer run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.embedded import free_port
from tests.acceptance.stack_support import ROOT, clean_env

ADMIN_TOKEN = "schemathesis-admin-token-0123456789abcdef"
CONFIG = ROOT / "tests" / "acceptance" / "schemathesis.toml"
OPERATIONS = 52
# Seeded and bounded: about 25 generated cases per operation and phase, a few hundred requests.
SEED = 20261130
MAX_EXAMPLES = 25


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "genq up exited during start-up"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("genq up did not become ready")


def _funded_user_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    user = httpx.post(f"{url}/v1/admin/users", json={"email": "fuzz@example.com"},
                      headers=admin, timeout=10)
    assert user.status_code == 201, user.text
    grant = httpx.post(f"{url}/v1/admin/users/{user.json()['id']}/credits",
                       json={"amount": 10**9, "reason": "schemathesis"}, headers=admin, timeout=10)
    assert grant.status_code == 200, grant.text
    key: str = user.json()["api_key"]
    return key


def test_schemathesis_finds_nothing_against_genq_up(tmp_path: Path, clean_data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "genq", "up", "--port", str(port)],
        # Event streams end after half a second, so each answer to them is complete.
        cwd=ROOT, env=clean_env(GENQ_DATA_DIR=str(clean_data_dir), GENQ_ADMIN_TOKEN=ADMIN_TOKEN,
                                GENQ_EVENTS_MAX_STREAM_S="0.5"),
        stdout=log, stderr=subprocess.STDOUT,
    )
    report = tmp_path / "report.json"
    try:
        _wait_ready(url, up)
        key = _funded_user_key(url)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{url}/openapi.json", "--checks", "all", "--seed", str(SEED),
             "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
             "--generation-database", "none", "--request-timeout", "30", "--no-color",
             "--report", "json", "--report-json-path", str(report)],
            cwd=tmp_path, env=clean_env(GENQ_ADMIN_TOKEN=ADMIN_TOKEN, USER_API_KEY=key),
            capture_output=True, text=True, timeout=240, check=False,
        )
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=90)
        log.close()
    output = run.stdout + run.stderr
    assert report.exists(), output
    result = json.loads(report.read_text())
    assert result["failures"] == [], output
    assert result["errors"] == [], output
    assert result["complete"] is True and result["stop_reason"] == "completed", output
    assert result["operations"]["tested"] == OPERATIONS, output
    assert result["operations"]["errored"] == 0, output
    for phase in ("coverage", "fuzzing", "stateful"):
        assert result["phases"][phase]["status"] == "success", (phase, output)
    assert result["test_cases"]["generated"] >= 300, output
    assert result["test_cases"]["with_failures"] == 0, output
    assert run.returncode == 0, output
    assert code == 0, (tmp_path / "up.log").read_text()
