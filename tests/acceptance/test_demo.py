"""`genq demo`, the README's first command, on the embedded default in a clean data folder."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.embedded import Services
from tests.acceptance.stack_support import ROOT, alive, clean_env, embedded_pids

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".webp": b"RIFF"}


def test_demo_runs_everything_and_leaves_nothing_running(clean_data_dir: Path) -> None:
    data_dir = clean_data_dir
    result = subprocess.run(
        [sys.executable, "-m", "genq", "demo"],
        cwd=ROOT, env=clean_env(GENQ_DATA_DIR=str(data_dir)),
        capture_output=True, text=True, timeout=240, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The terminal shows the demo alone: no log line of its own or of `genq migrate`.
    assert result.stderr == ""
    assert not [line for line in out.splitlines() if line.startswith("{")], out

    assert "demo finished: everything adds up" in out
    # The first job's events, printed as they arrived: queued, started, its 2 outputs, done.
    events = re.findall(r"^  event +(\d+)  (job\.\w+) *(.*)$", out, re.MULTILINE)
    assert [e[1] for e in events] == ["job.queued", "job.started", "job.output",
                                      "job.output", "job.succeeded"], out
    assert [int(e[0]) for e in events] == sorted(int(e[0]) for e in events)
    assert events[0][2] == "queue position 0"
    assert [e[2] for e in events[2:4]] == ["output 1 of 2", "output 2 of 2"]
    assert events[4][2] == "2 outputs, 2 credits captured"
    assert out.count("saved to library ") == 2
    # One signed job.completed per job, each verified by the demo's receiver.
    hooks = re.findall(r"^webhook job\.completed (\S+)\s+(\w+)\s+signature verified", out,
                       re.MULTILINE)
    assert sorted(status for _, status in hooks) == ["canceled"] + ["succeeded"] * 6, out
    assert len({job for job, _ in hooks}) == 7
    assert "NOT VERIFIED" not in out
    assert re.search(r"collection 'Demo favourites \w+': 2 items", out), out
    shared = re.search(r"published (\S{11}); share link http://127\.0\.0\.1:\d+/v1/shared/\1",
                       out)
    assert shared is not None, out
    feed = out.split("public feed (newest first):\n", 1)[1].splitlines()
    assert feed[0].startswith(f"  {shared.group(1)}  "), out
    quota = re.search(r"storage quota set to (\d+) bytes \(user's own\); the library takes "
                      r"(\d+)\nsaving a third output -> HTTP 403 storage_quota_exceeded\n", out)
    assert quota is not None and quota.group(1) == quota.group(2) != "0", out
    statuses = re.findall(
        r"^job \S+\s+(\S+)\s+(\w+)\s+reserved (\d+) captured (\d+) refunded (\d+)",
        out, re.MULTILINE,
    )
    assert len(statuses) == 7
    assert sorted(s[1] for s in statuses) == ["canceled"] + ["succeeded"] * 6
    for _model, status, reserved, captured, refunded in statuses:
        if status == "succeeded":
            assert captured == reserved and refunded == "0"
        else:
            assert captured == "0" and refunded == reserved
    captured_total = sum(int(s[3]) for s in statuses)
    balances = re.search(r"balance before (\d+) \(reserved 0\), after (\d+) \(reserved 0\)", out)
    assert balances is not None
    before, after = map(int, balances.groups())
    assert before == 100
    assert after == before - captured_total

    # Every output it lists is a real image file, downloaded through the API.
    outputs = re.findall(r"^    output (\S+)\s+(image/\w+)", out, re.MULTILINE)
    assert len(outputs) == 9  # 2 + 1 + 3 + 2 + 1 images from the five jobs that ran
    for path, _mime in outputs:
        file = Path(path)
        assert file.is_relative_to(data_dir.resolve())
        assert file.read_bytes().startswith(MAGIC[file.suffix])

    # The local/clip job: a real MP4 with its duration and frame rate, and its poster.
    clip = re.search(r"^    output (\S+)\s+video/mp4 256x256\s+\d+ bytes, 2.00 s at 12 fps$\n"
                     r"^    poster (\S+)\s+image/webp 256x256", out, re.MULTILINE)
    assert clip is not None, out
    assert Path(clip.group(1)).read_bytes()[4:8] == b"ftyp"
    assert Path(clip.group(2)).read_bytes()[8:12] == b"WEBP"

    ledger_kinds = re.findall(r"^  (grant|reserve|capture|refund) ", out, re.MULTILINE)
    assert ledger_kinds.count("reserve") == 7
    assert ledger_kinds.count("capture") == 6
    assert ledger_kinds.count("refund") == 1

    # A user signed in with a token the demo made: created with its starting credits once,
    # the same user for a second token of the same sub, a changed token refused.
    signed_in = re.search(r"^sign-in: a token for sub (\S+) -> user (\S+) created "
                          r"\(signed-in-\w+@example.com\), balance 10 \(starting credits\)$",
                          out, re.MULTILINE)
    assert signed_in is not None, out
    assert "sign-in: a new token for the same sub -> the same user: True, balance 10\n" in out
    assert ("sign-in: the token with its payload changed -> HTTP 401 invalid_token "
            "(bad_signature)\n") in out

    assert "stopped genq and its embedded servers" in out

    # The processes' logs and the stored assets are for genq's user alone.
    logs = data_dir / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert sorted(f.name for f in logs.iterdir()) == [
        "api.log", "demo.log", "migrate.log", "scheduler.log", "worker.log"]
    assert '"event": "migration_applied"' in (logs / "migrate.log").read_text()
    assert {stat.S_IMODE(f.stat().st_mode) for f in logs.iterdir()} == {0o600}
    stored = [f for f in (data_dir / "storage").rglob("*") if f.is_file()]
    # The 9 images and their 9 thumbnails, the clip and its poster; the library's copies of
    # two images and of their thumbnails.
    assert len(stored) == 24
    assert sum(f.name.endswith(".thumb.webp") for f in stored) == 11
    library = [f for f in stored if f.relative_to(data_dir / "storage").parts[0] == "library"]
    assert len(library) == 4
    assert sum(f.name.endswith(".poster.webp") for f in stored) == 1
    assert {stat.S_IMODE(f.stat().st_mode) for f in stored} == {0o600}
    folders = [data_dir / "storage", *(f for f in (data_dir / "storage").rglob("*") if f.is_dir())]
    assert {stat.S_IMODE(f.stat().st_mode) for f in folders} == {0o700}
    assert embedded_pids(data_dir) == [] or not any(alive(p) for p in embedded_pids(data_dir))


def test_demo_that_cannot_start_says_why_on_stderr_and_leaves_nothing_running(
    clean_data_dir: Path, services: Services
) -> None:
    data_dir = clean_data_dir
    nowhere = urlunsplit(urlsplit(services.database_url)._replace(path="/genq_nowhere"))
    result = subprocess.run(
        [sys.executable, "-m", "genq", "demo"],
        cwd=ROOT, env=clean_env(GENQ_DATA_DIR=str(data_dir), GENQ_DATABASE_URL=nowhere),
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    migrate_log = data_dir / "logs" / "migrate.log"
    assert result.stderr.splitlines() == [
        'genq: genq migrate failed (exit code 1): asyncpg.exceptions.InvalidCatalogNameError: '
        f'database "genq_nowhere" does not exist (its output is in {migrate_log})'
    ]
    assert "Traceback" in migrate_log.read_text()  # the details are in the log
    assert "demo finished" not in result.stdout
    # The embedded valkey it started for the demo is stopped again.
    assert embedded_pids(data_dir) == [] or not any(alive(p) for p in embedded_pids(data_dir))
