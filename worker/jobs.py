"""The job row from the worker's side: claim, lease, provider id, and the final transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import ledger
from shared.db import Pool
from shared.settings import Settings
from sql import queries
from worker.staging import StagedAsset


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds; ``attempt`` fences every later write."""

    id: uuid.UUID
    user_id: uuid.UUID
    model: str
    provider: str
    prompt: str
    num_outputs: int
    params: dict[str, Any]
    seed: int | None
    price_per_output: int
    reservation_id: uuid.UUID | None
    provider_prediction_id: str | None
    attempt: int
    max_attempts: int
    cancel_requested_at: datetime | None
    # The model's provider ref and timeout, read by the claim; None if the model is unknown.
    model_ref: str | None
    model_timeout_s: int | None


@dataclass(frozen=True)
class JobState:
    """Where a job stands when a claim found nothing."""

    status: str
    lease_owner: str | None
    lease_left_s: float | None


@dataclass(frozen=True)
class Outcome:
    """The terminal state a job is being moved to."""

    status: str  # succeeded | failed | canceled
    error_code: str | None = None
    error_message: str | None = None


async def claim(pool: Pool, job_id: uuid.UUID, owner: str, lease_s: float) -> ClaimedJob | None:
    """``queued -> running`` (or take back an expired lease) in one conditional UPDATE."""
    row = await pool.fetchrow(queries["claim_job"], job_id, owner, lease_s)
    return None if row is None else ClaimedJob(**dict(row.items()))


async def state(pool: Pool, job_id: uuid.UUID) -> JobState | None:
    """The job's status and lease, or None if there is no such job."""
    row = await pool.fetchrow(queries["get_job_state"], job_id)
    if row is None:
        return None
    return JobState(row["status"], row["lease_owner"], row["lease_left_s"])


async def renew_lease(
    pool: Pool, job: ClaimedJob, owner: str, lease_s: float
) -> tuple[bool, datetime | None]:
    """Extend the lease: (still ours, cancel_requested_at)."""
    row = await pool.fetchrow(queries["renew_lease"], job.id, job.attempt, lease_s, owner)
    if row is None:
        return False, None
    return True, row["cancel_requested_at"]


async def release_lease(pool: Pool, job: ClaimedJob) -> None:
    """Hand the job back: its lease expires now, so the next delivery can claim it at once."""
    await pool.execute(queries["release_lease"], job.id, job.attempt)


async def set_prediction_id(pool: Pool, job: ClaimedJob, prediction_id: str) -> bool:
    """Store the provider's id; False if this attempt no longer holds the job."""
    return await pool.fetchval(queries["set_prediction_id"], job.id, job.attempt,
                               prediction_id) is not None


async def finalize(
    pool: Pool, settings: Settings, job: ClaimedJob, outcome: Outcome,
    assets: list[StagedAsset],
) -> bool:
    """In ONE statement (one transaction): the terminal status, the asset rows, and the
    settlement.

    Success captures ``len(assets) x price`` and refunds the rest; failure and cancel refund
    all. Returns False (and writes nothing) if this attempt no longer holds the job.
    """
    made = len(assets) if outcome.status == "succeeded" else 0
    rows = [
        {"asset_index": a.index, "asset_type": a.media.kind, "temp_storage_path": a.key,
         "file_size_bytes": a.size, "mime_type": a.media.mime, "duration_seconds": a.duration_s,
         "width": a.width, "height": a.height}
        for a in (assets if made else [])
    ]
    row = await ledger.fetchrow(
        pool, queries["finalize_job"], job.id, job.attempt, outcome.status, made,
        outcome.error_code, outcome.error_message, rows, float(settings.workspace_ttl_s),
    )
    return bool(row["held"])
