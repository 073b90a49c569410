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
        feed = [json.loads(line) for line in lines[start + 8:-3]]
        assert feed == [{"short_id": short_id, "title": "Lighthouse at dusk",
                         "prompt": "a lighthouse at dusk"}]
        # Step 8: the signed-in user, created from the token's claims.
        assert json.loads(lines[-3]) == {"email": "grace@example.com",
                                         "identities": [{"subject": "user-42"}]}
        # Step 9: the webhook secret, and a link-local webhook URL refused.
        assert json.loads(lines[-2]) == {"secret_prefix": "whsec_"}
        assert json.loads(lines[-1]) == {"code": "validation_error", "field": "webhook_url"}
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=90)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    assert "genq stopped" in (tmp_path / "up.log").read_text()
    left = [p for p in processes if alive(p)]
    assert left == [], f"processes still running after SIGINT: {left}"
