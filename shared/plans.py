"""Subscription plans: a TOML catalog an operator edits (like the models), synced into the
``plans`` table at migrate, and the scheduler's periodic grants.

A plan grants ``credits_per_period`` credits each ``period`` (a UTC day or month) and may set its
users' priority tier, running cap, submission rate and storage quota. Every user is on the
built-in ``free`` plan until an admin assigns another one.

A period's grant is a ledger grant under the idempotency key ``plan:<plan>:<period start>``
(unique per account in the ledger), so it is made exactly once per user and period however
many schedulers run it and wherever one stops; a scheduler that was down grants the period it
comes back in, once, never the periods it missed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared import ledger
from shared.db import Connection, Pool
from shared.entries import load_entries
from shared.errors import BalanceLimitExceeded
from shared.logging import get_logger
from shared.settings import Settings
from sql import queries

log = get_logger(__name__)

DEFAULT_PLAN = "free"
MAX_TIER = 9


class PlanSpec(BaseModel):
    """One ``[[plans]]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    credits_per_period: int = Field(default=0, ge=0, le=10**15)
    period: Literal["day", "month"] = "month"
    # Higher tiers' queued jobs start first (see shared/queue.py).
    priority_tier: int = Field(default=0, ge=0, le=MAX_TIER)
    # Overrides of GENQ_USER_MAX_RUNNING and GENQ_USER_SUBMITS_PER_MINUTE (None: the setting).
    max_running: int | None = Field(default=None, ge=1, le=1_000_000)
    submits_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    # Library bytes its users may keep (a user's own quota comes first; None: the setting).
    storage_quota_bytes: int | None = Field(default=None, ge=1)


def load_plans(plans_file: Path | None) -> list[PlanSpec]:
    """The built-in plans, with ``plans_file``'s merged over them by name."""
    return list(load_entries(PlanSpec, "plans", "name", "plans.toml", plans_file,
                             "GENQ_PLANS_FILE").values())


def dispatch_on(settings: Settings) -> bool:
    """Whether queued jobs go through the dispatch (shared/dispatch.py), where running caps and
    priority tiers are applied: when ``GENQ_USER_MAX_RUNNING`` is set, or when a plan of the
    catalog has a ``max_running`` or a ``priority_tier`` above 0. Every process reads the
    same catalog, so they all agree."""
    return settings.user_max_running > 0 or any(
        p.max_running is not None or p.priority_tier > 0 for p in load_plans(settings.plans_file))


async def sync_plans(conn: Connection, specs: list[PlanSpec]) -> int:
    """Upsert every plan. A plan dropped from the files stays (users are on it) but no longer
    grants credits or can be assigned. Returns the number listed."""
    async with conn.transaction():
        for p in specs:
            await conn.execute(
                queries["upsert_plan"], p.name, p.description, p.credits_per_period, p.period,
                p.priority_tier, p.max_running, p.submits_per_minute, p.storage_quota_bytes,
            )
        await conn.execute(queries["disable_plans_not_in"], [p.name for p in specs])
    return len(specs)


def period_start(period: str, now: datetime) -> datetime:
    """The start (UTC) of the day or month ``now`` is in."""
    now = now.astimezone(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def grant_key(plan: str, start: datetime) -> str:
    """The ledger idempotency key of a plan's grant for the period starting at ``start``."""
    return f"plan:{plan}:{start:%Y-%m-%d}"


@dataclass
class GrantRun:
    """What one run of :func:`grant_plan_credits` did."""

    granted: int = 0
    credits: int = 0
    over_limit: int = 0


async def grant_plan_credits(pool: Pool, *, now: datetime, batch_size: int) -> GrantRun:
    """Grant every user on a granting plan their plan's credits for the period ``now`` is in,
    unless the ledger already has that grant (in batches of ``batch_size`` users)."""
    run = GrantRun()
    after = uuid.UUID(int=0)
    while True:
        rows = await pool.fetch(queries["users_due_plan_grant"], now, after, batch_size)
        for row in rows:
            key = grant_key(row["plan"], period_start(row["period"], now))
            try:
                done = await ledger.grant(
                    pool, row["user_id"], row["credits_per_period"], idempotency_key=key,
                    reason=f"plan {row['plan']}: credits for the {row['period']}",
                )
            except BalanceLimitExceeded:
                run.over_limit += 1
                log.warning("plan_grant_over_limit", user_id=str(row["user_id"]), key=key)
                continue
            if not done.replayed:
                run.granted += 1
                run.credits += row["credits_per_period"]
        if len(rows) < batch_size:
            return run
        after = rows[-1]["user_id"]


def plan_json(row: Any) -> dict[str, Any]:
    """A plan as the API shows it."""
    return {
        "name": row["name"], "description": row["description"],
        "credits_per_period": row["credits_per_period"], "period": row["period"],
        "priority_tier": row["priority_tier"], "max_running": row["max_running"],
        "submits_per_minute": row["submits_per_minute"],
        "storage_quota_bytes": row["storage_quota_bytes"],
    }
