"""The scenarios, each run against its baseline in the same run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.env import BenchEnv
from bench.report import Row
from bench.scenarios import (
    cleanup,
    events,
    fair,
    hot_account,
    inflight,
    intake,
    latency,
    library,
    media,
    pipeline,
    rows,
    webhooks,
)

Scenario = Callable[[BenchEnv, bool], Awaitable[list[Row]]]

SCENARIOS: dict[str, Scenario] = {
    "pipeline": pipeline.run,
    "intake": intake.run,
    "latency": latency.run,
    "inflight": inflight.run,
    "hot_account": hot_account.run,
    "cleanup": cleanup.run,
    "media": media.run,
    "fair": fair.run,
    "library": library.run,
    "events": events.run,
    "webhooks": webhooks.run,
    "rows": rows.run,
}


def combined(rows: list[Row]) -> list[Row]:
    """Figures that need more than one scenario: PostgreSQL CPU per job over its whole life
    (the intake's submit, the worker's claim and finalize) against the same for the two floors
    (the group-commit intake floor's INSERT, the worker floor's UPDATE), when both ran."""
    intake_row = next((r for r in rows if r.scenario == "intake" and r.limit is not None), None)
    pipeline_row = next((r for r in rows if r.scenario == "pipeline" and r.limit is not None),
                        None)
    if intake_row is None or pipeline_row is None:
        return []
    submit = intake_row.notes["genq"]["cpu_us_per_request"]["postgres"]
    submit_floor = intake_row.notes["group_commit_floor"]["cpu_us_per_request"]["postgres"]
    work = pipeline_row.notes["genq_cpu_us_per_job"]["postgres"]
    work_floor = pipeline_row.notes["floor_cpu_us_per_job"]["postgres"]
    return [Row(
        "combined", "PostgreSQL CPU per job, submit + claim + finalize, vs the two floors'",
        submit + work, submit_floor + work_floor, "us", better="lower", limit=3.0,
        target="<= 3x the floors'",
        notes={"submit_us": submit, "claim_finalize_us": work,
               "intake_floor_us": submit_floor, "worker_floor_us": work_floor},
    )]
