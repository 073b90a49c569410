"""The scenarios, each run against its baseline in the same run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.env import BenchEnv
from bench.report import Row
from bench.scenarios import (
    cleanup,
    fair,
    hot_account,
    inflight,
    intake,
    latency,
    library,
    media,
    pipeline,
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
    "webhooks": webhooks.run,
}
