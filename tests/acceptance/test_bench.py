"""``python -m bench`` as a user runs it: a quick run of the intake, pipeline, media, latency and
rows scenarios on the test's services, every figure measured against its baseline and written to the
JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# The rows scenario's figures of a quick run (batches of 4 only).
ONE_HARNESS = "PostgreSQL CPU per job, one harness, batches of 4:"


def test_quick_bench_measures_every_figure_against_its_baseline(
    settings: Settings, private_redis_url: str, tmp_path: Path
) -> None:
    # A Redis database of its own: the bare arq baseline keeps its results there for an hour.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(GENQ_DATABASE_URL=str(settings.database_url),
               GENQ_REDIS_URL=private_redis_url, GENQ_DATA_DIR=str(settings.data_dir))
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "pipeline,intake,media,latency,rows",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    results = json.loads(out.read_text())
    assert results["quick"] is True and results["failed"] == {}
    rows = {row["figure"]: row for row in results["rows"]}
    for figure in ("pipeline: genq vs worker floor (1 PG UPDATE + 1 fsync)",
                   "pipeline: jobs/s through one worker vs bare arq",
                   "pipeline floor (1 PG UPDATE + 1 fsync) vs bare arq",
                   "pipeline: PostgreSQL CPU per job (claim + finalize) vs floor",
                   "pipeline: machine CPU per job vs bare arq",
                   "pipeline floor with genq's rows and files vs worker floor",
                   "pipeline: genq vs the floor with genq's rows and files",
                   "pipeline floor with genq's rows and files: PostgreSQL CPU per job vs "
                   "worker floor",
                   "intake: genq vs group-commit floor, req/s",
                   "intake: POST /v1/jobs at 64 connections vs bare Starlette",
                   "intake floor, group commit, vs bare Starlette",
                   "intake: PostgreSQL CPU per request (submit) vs group-commit floor",
                   "intake floor with genq's rows vs group-commit floor, req/s",
                   "intake: genq vs the floor with genq's rows, req/s",
                   "intake floor with genq's rows: PostgreSQL CPU per request vs "
                   "group-commit floor",
                   "intake floor with genq's rows: cores needed at 0.6x the group-commit "
                   "floor vs the machine's",
                   "PostgreSQL CPU per job, submit + claim + finalize, vs the two floors'",
                   "thumbnails/s, 1024x1024 PNG (genq variants vs Pillow bare loop)",
                   "pipeline: 1024x1024 jobs/s, variants on vs off",
                   "latency: submit -> succeeded, idle, p50",
                   "latency: submit -> succeeded, idle, p99",
                   f"{ONE_HARNESS} genq's statements vs the floors'",
                   f"{ONE_HARNESS} genq's rows in plain SQL vs the floors'",
                   f"{ONE_HARNESS} genq's statements vs its rows in plain SQL"):
        row = rows[figure]
        if "CPU per" in figure:
            # /proc counts CPU in clock ticks (10 ms): a quick run's floor can spend less than
            # one in PostgreSQL, so its baseline may read 0; genq's own never does.
            assert row["genq"] > 0 and row["baseline"] >= 0, row
            if row["baseline"] == 0:
                continue
        else:
            assert row["genq"] > 0 and row["baseline"] > 0, row
        assert row["ratio"] == row["genq"] / row["baseline"]
    assert rows["pipeline: genq vs worker floor (1 PG UPDATE + 1 fsync)"]["target"] == (
        ">= 0.8x floor")
    assert rows["intake: genq vs group-commit floor, req/s"]["met"] in (True, False)
    # The floor with genq's rows is checked by the scenario itself (a job, its hold and its
    # ledger row for each job it queued); its notes keep its CPU per request, by component.
    cores = rows["intake floor with genq's rows: cores needed at 0.6x the group-commit floor "
                 "vs the machine's"]
    rows_floor = rows["intake: genq vs group-commit floor, req/s"]["notes"]["rows_floor"]
    assert cores["baseline"] == os.cpu_count()
    assert cores["genq"] == pytest.approx(
        0.6 * rows["intake: genq vs group-commit floor, req/s"]["baseline"]
        * rows_floor["cpu_us_per_request"]["machine"] / 1e6)
    combined = rows["PostgreSQL CPU per job, submit + claim + finalize, vs the two floors'"]
    notes = combined["notes"]
    assert combined["genq"] == notes["submit_us"] + notes["claim_finalize_us"]
    assert combined["met"] in (True, False)
    # Where an idle job's time goes: each phase took some, and the request was answered after
    # its submit statement started.
    phases = rows["latency: submit -> succeeded, idle, p50"]["notes"]
    assert all(phases[f"{name}_p50_ms"] > 0 for name in (
        "post", "to_created", "created_to_claimed", "claimed_to_finished")), phases
    assert phases["post_p50_ms"] > phases["to_created_p50_ms"], phases
    # PostgreSQL CPU per job in one harness: every stage of every side but the floors took some
    # (the scenario itself checks that each of those sides left the same rows), and a quick
    # run's one round totals its stages. The floors' statements are not required to show any:
    # a quick run's 400 floor jobs take about 50 ms of CPU spread over 4 backends, which /proc's
    # 10 ms clock ticks can read as none at all (seen in a CI run).
    rows_row = rows[f"{ONE_HARNESS} genq's statements vs the floors'"]
    sides = rows_row["notes"]["postgres_cpu_us_per_job"]
    assert set(sides) == {"genq", "plain", "hold_on_job", "floor", "plain_no_events"}
    for side, stages in sides.items():
        parts = [stages[s] for s in ("submit", "claim", "count", "finalize")]
        assert stages["total"] == pytest.approx(sum(parts)), side
        assert side == "floor" or all(p > 0 for p in parts), (side, stages)
    assert rows_row["genq"] == sides["genq"]["total"]
    assert rows_row["baseline"] == sides["floor"]["total"]
    assert rows_row["met"] in (True, False)
    # The table on standard output names every figure.
    assert all(figure in run.stdout for figure in rows)
    # Nothing the run started is left running (its processes carry its GENQ_DATA_DIR).
    assert _processes_with(f"GENQ_DATA_DIR={settings.data_dir}".encode()) == []


def _processes_with(variable: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if variable in environ:
            found.append(int(entry.name))
    return found
