"""`genq up` as a subprocess answers the README's curl walkthrough, run exactly as written,
then stops cleanly on SIGINT with nothing left running."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port
from tests.acceptance.stack_support import ROOT, alive, children_of, clean_env, embedded_pids

TOKEN = "walkthrough-admin-token-0123456789abcdef"
JWT = {"GENQ_JWT_SECRET": "walkthrough-jwt-secret-0123456789abcdef",
       "GENQ_JWT_ISSUER": "https://auth.example.com/auth/v1",
       "GENQ_JWT_AUDIENCE": "authenticated"}


def readme_walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- walkthrough:[^>]*-->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert match, "README.md has no walkthrough block"
    return match.group(1)


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


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl, jq")
def test_up_answers_the_readme_walkthrough_then_stops_on_sigint(
    tmp_path: Path, clean_data_dir: Path
) -> None:
    data_dir = clean_data_dir
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "genq", "up", "--port", str(port)],
        cwd=ROOT, env=clean_env(GENQ_DATA_DIR=str(data_dir), GENQ_ADMIN_TOKEN=TOKEN, **JWT),
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(url, up)
        processes = children_of(up.pid) + embedded_pids(data_dir)
        assert len(processes) >= 5  # api, worker, scheduler, postgres, valkey

        work = tmp_path / "client"
        work.mkdir()
        walk = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_walkthrough()],
            cwd=work, env=clean_env(GENQ_API=url, GENQ_ADMIN_TOKEN=TOKEN, **JWT),
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert walk.returncode == 0, walk.stdout + walk.stderr
        lines = walk.stdout.splitlines()

        grant = json.loads(lines[0])
        assert grant["balance"] == 50
        job = json.loads("".join(lines[1:lines.index("}") + 1]))
        assert job["status"] == "succeeded"
        assert job["cost"] == {
            "price_per_output": 1, "reserved": 2, "captured": 2, "refunded": 0,
        }
        assert len(job["outputs"]) == 2
        assert (work / "lighthouse.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert (work / "lighthouse-signed.png").read_bytes() == (
            work / "lighthouse.png").read_bytes()
        credits = json.loads(lines[lines.index("}") + 1])
        assert credits == {"balance": 48, "reserved": 0}
        start = lines.index("}") + 2
        ledger = [json.loads(line) for line in lines[start:start + 3]]
        assert ledger == [
            {"kind": "capture", "amount": 0, "balance_after": 48},
            {"kind": "reserve", "amount": -2, "balance_after": 48},
            {"kind": "grant", "amount": 50, "balance_after": 50},
        ]
        # 7. The library: two saved items, their collection, the share link and the feed.
        saved = [json.loads(line) for line in lines[start + 3:start + 5]]
        assert [s["visibility"] for s in saved] == ["private", "private"]
        assert json.loads(lines[start + 5]) == {"name": "Lighthouses", "asset_count": 2}
        share = lines[start + 6]
        assert share.startswith(f"share link: {url}/v1/shared/")
        short_id = share.rsplit("/", 1)[1]
        assert short_id in {s["short_id"] for s in saved}
        shared = json.loads(lines[start + 7])
        assert shared == {"title": "Lighthouse at dusk",
                          "content_url": f"/v1/shared/{short_id}/content"}
        signed_in = next(i for i, line in enumerate(lines) if line.startswith('{"email"'))
        feed = [json.loads(line) for line in lines[start + 8:signed_in]]
        assert feed == [{"short_id": short_id, "title": "Lighthouse at dusk",
                         "prompt": "a lighthouse at dusk"}]
        # Step 8: the signed-in user, created from the token's claims.
        assert json.loads(lines[signed_in]) == {"email": "grace@example.com",
                                                "identities": [{"subject": "user-42"}]}
        # Step 9: Ada's own storage quota, and what her two saved outputs take.
        assert json.loads(lines[signed_in + 1]) == {"quota_bytes": 1_000_000,
                                                    "quota_source": "user"}
        copies = [f for s in saved
                  for f in (data_dir / "storage" / "library").glob(f"*/{s['short_id']}.png")]
        assert len(copies) == 2
        used = sum(f.stat().st_size for f in copies)
        assert json.loads(lines[signed_in + 2]) == {"used_bytes": used, "quota_bytes": 1_000_000,
                                                    "quota_source": "user"}
        # Step 10: the second job's events as they happened, then the stream ended.
        assert lines[signed_in + 3:signed_in + 7] == [
            "event: job.queued", "event: job.started", "event: job.output", "event: job.succeeded"]
        # Step 11: the old key revoked (204) and refused (401); the audit log; the metrics.
        rotated = lines[signed_in + 7:]
        assert rotated[:2] == ["204", "401"]
        assert [json.loads(line) for line in rotated[2:4]] == [
            {"actor": "admin", "action": "user.storage_quota"},
            {"actor": "admin", "action": "credits.grant"}]
        assert rotated[4:6] == ['genq_jobs_submitted_total{model="local/sketch"} 2.0',
                                "genq_credits_reserved_total 3.0"]
        # Step 12: the webhook secret, and a link-local webhook URL refused.
        assert json.loads(rotated[6]) == {"secret_prefix": "whsec_"}
        assert json.loads(rotated[7]) == {"code": "validation_error", "field": "webhook_url"}
        assert len(rotated) == 8
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=90)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    assert "genq stopped" in (tmp_path / "up.log").read_text()
    # Where the API serves its metrics (GENQ_METRICS_PORT unset: the API's alone).
    assert f"metrics: api {url}/metrics (the API's to the admin token)" in (
        tmp_path / "up.log").read_text()
    left = [p for p in processes if alive(p)]
    assert left == [], f"processes still running after SIGINT: {left}"
