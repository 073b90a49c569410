"""The job row from the worker's side: claim, lease, provider id, and the final transaction."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared import ledger
from shared.batch import Batcher
from shared.db import Pool
from shared.errors import GenqError
from shared.logging import get_logger
from shared.settings import Settings
from shared.types import JobStatus
from sql import queries
from worker.staging import StagedAsset

log = get_logger(__name__)

# Jobs that reach the claim or the final write together share one statement. A batch holds one
# connection; at most BATCH_FLUSHES run at once, leaving the rest of the pool to heartbeats.
BATCH_SIZE = 32
BATCH_FLUSHES = 4


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
    # The model's provider ref, timeout, params schema and revision, read by the claim; None if
    # the model is unknown.
    model_ref: str | None
    model_timeout_s: int | None
    model_params_schema: dict[str, Any] | None = None
    model_revision: str | None = None
    # The model's provider limits (None: none).
    model_max_concurrency: int | None = None
    model_max_per_minute: int | None = None
    # An OpenAI-compatible model's server and the environment variable holding its key.
    model_base_url: str | None = None
    model_api_key_env: str | None = None
    # The fallback model the job moved to (then every model_* field above is the fallback's),
    # and the job's model's fallback.
    ran_model: str | None = None
    model_fallback: str | None = None
    # Seconds from submit to this claim (the queue wait, on the first attempt).
    queued_s: float | None = None


@dataclass(frozen=True)
class JobState:
    """Where a job stands when a claim found nothing."""

    status: JobStatus
    lease_owner: str | None
    lease_left_s: float | None


@dataclass(frozen=True)
class Outcome:
    """The terminal state a job is being moved to."""

    status: JobStatus  # a terminal one
    error_code: str | None = None
    error_message: str | None = None


async def claim_many(
    pool: Pool, job_ids: list[uuid.UUID], owner: str, lease_s: float
) -> list[ClaimedJob | None]:
    """``queued -> running`` (or take back an expired lease) for each job, in one conditional
    UPDATE; None for a job that was not claimable. An id listed twice (two deliveries of one
    job in the same batch) is claimed for its first listing only."""
    rows = await pool.fetch(queries["claim_jobs"], list(dict.fromkeys(job_ids)), owner, lease_s)
    claimed = {row["id"]: ClaimedJob(**dict(row.items())) for row in rows}
    return [claimed.pop(job_id, None) for job_id in job_ids]


async def state(pool: Pool, job_id: uuid.UUID) -> JobState | None:
    """The job's status and lease, or None if there is no such job."""
    row = await pool.fetchrow(queries["get_job_state"], job_id)
    if row is None:
        return None
    return JobState(JobStatus(row["status"]), row["lease_owner"], row["lease_left_s"])


async def renew_leases(
    pool: Pool, held: list[ClaimedJob], owner: str, lease_s: float
) -> dict[uuid.UUID, datetime | None]:
    """Extend the leases of every job in ``held``, in one statement: the cancel_requested_at
    of each job still held (a job whose row was busy at this moment is kept and renewed at
    the next beat); a job missing from the answer has lost its lease, or ended."""
    rows = await pool.fetch(queries["renew_leases"], [job.id for job in held],
                            [job.attempt for job in held], lease_s, owner)
    return {row["id"]: row["cancel_requested_at"] for row in rows}


async def release_lease(pool: Pool, job: ClaimedJob) -> None:
    """Hand the job back: its lease expires now, so the next delivery can claim it at once."""
    await pool.execute(queries["release_lease"], job.id, job.attempt)


@dataclass(frozen=True)
class FallbackModel:
    """A fallback model as the worker needs it."""

    key: str
    provider: str
    ref: str
    timeout_s: int
    params_schema: dict[str, Any]
    revision: str
    base_url: str | None
    api_key_env: str | None
    price_per_output: int
    price_tiers: list[dict[str, Any]]
    price_per_second: int | None
    enabled: bool
    max_concurrency: int | None
    max_per_minute: int | None


async def fallback_model(pool: Pool, key: str) -> FallbackModel | None:
    """The model ``key`` (None if the catalog has no such model)."""
    row = await pool.fetchrow(queries["get_fallback_model"], key)
    return None if row is None else FallbackModel(**dict(row.items()))


async def move_to_fallback(pool: Pool, job: ClaimedJob, model: FallbackModel,
                           price_per_output: int) -> bool:
    """Record that the job runs on ``model`` now, at ``price_per_output``; False if this
    attempt no longer holds the job (or it already moved)."""
    return await pool.fetchval(
        queries["move_to_fallback"], job.id, job.attempt, model.key, model.provider,
        price_per_output, model.price_per_second,
    ) is not None


async def set_provider_queue_position(pool: Pool, job: ClaimedJob, position: int | None) -> None:
    """Show where the job waits in the provider's queue (None: it is not waiting there)."""
    await pool.execute(queries["set_provider_queue_position"], job.id, job.attempt, position)


async def count_output_staged(pool: Pool, job: ClaimedJob) -> int | None:
    """One more output of this attempt is in storage; how many now (None: the attempt no
    longer holds the job)."""
    staged: int | None = await pool.fetchval(queries["count_output_staged"], job.id,
                                             job.attempt)
    return staged


async def set_prediction_id(pool: Pool, job: ClaimedJob, prediction_id: str) -> bool:
    """Store the provider's id; False if this attempt no longer holds the job."""
    return await pool.fetchval(queries["set_prediction_id"], job.id, job.attempt,
                               prediction_id) is not None


@dataclass(frozen=True)
class Final:
    """One job's final write: its terminal outcome and, for a success, its staged assets."""

    job: ClaimedJob
    outcome: Outcome
    assets: list[StagedAsset]

    def args(self) -> tuple[int, list[dict[str, Any]]]:
        """outputs_made and the asset rows (only for a success)."""
        made = len(self.assets) if self.outcome.status == JobStatus.SUCCEEDED else 0
        rows = [
            {"asset_index": a.index, "asset_type": a.media.kind, "storage_key": a.key,
             "file_size_bytes": a.size, "mime_type": a.media.mime,
             "duration_seconds": a.duration_s, "width": a.width, "height": a.height,
             "fps": a.fps, "variants": [v.row() for v in a.variants]}
            for a in (self.assets if made else [])
        ]
        return made, rows


async def finalize(pool: Pool, settings: Settings, final: Final) -> str | None:
    """In ONE statement (one transaction): the terminal status, the asset rows, and the
    settlement; returns the status written.

    Success captures ``len(assets) x price`` and refunds the rest; failure and cancel refund
    all. A cancel requested before this write wins: the job is ``canceled``, refunded in full,
    and no asset row is written, so the caller must discard its files. Returns None (and
    writes nothing) if this attempt no longer holds the job.
    """
    made, rows = final.args()
    job, outcome = final.job, final.outcome
    row = await ledger.fetchrow(
        pool, queries["finalize_job"], job.id, job.attempt, outcome.status, made,
        outcome.error_code, outcome.error_message, rows, float(settings.workspace_ttl_s),
    )
    status: str | None = row["status"]
    return status


async def finalize_many(
    pool: Pool, settings: Settings, finals: list[Final]
) -> list[str | None]:
    """:func:`finalize` for many jobs in one statement and one transaction. Any error writes
    nothing for any of them: the caller finalizes each alone (see :class:`WorkerBatches`)."""
    items = []
    for i, final in enumerate(finals):
        made, rows = final.args()
        job, outcome = final.job, final.outcome
        items.append({"item": i, "job": str(job.id), "user_id": str(job.user_id),
                      "attempt": job.attempt,
                      "status": outcome.status, "made": made,
                      "error_code": outcome.error_code, "error_message": outcome.error_message,
                      "assets": rows})
    result = await pool.fetch(queries["finalize_jobs"], items, float(settings.workspace_ttl_s))
    written: dict[int, str | None] = {row["item"]: row["status"] for row in result}
    return [written[i] for i in range(len(finals))]


class WorkerBatches:
    """The worker's group commit (shared/batch.py): the claims, and the final writes, of the
    jobs that reach them at the same moment in this process go to Postgres together."""

    def __init__(self, pool: Pool, settings: Settings, owner: str) -> None:
        self.pool, self.settings, self.owner = pool, settings, owner
        flushes = max(1, min(BATCH_FLUSHES, settings.db_pool_max_size // 2))
        self.claim: Batcher[uuid.UUID, ClaimedJob | None] = Batcher(
            self._claim, max_batch=BATCH_SIZE, max_flushes=flushes
        )
        self.finalize: Batcher[Final, str | None] = Batcher(
            self._finalize, max_batch=BATCH_SIZE, max_flushes=flushes
        )

    async def drain(self) -> None:
        """Let started batches finish (before the pool closes)."""
        await self.claim.drain()
        await self.finalize.drain()

    async def _claim(self, job_ids: list[uuid.UUID]) -> list[ClaimedJob | None]:
        return await claim_many(self.pool, job_ids, self.owner, self.settings.lease_s)

    async def _finalize(self, finals: list[Final]) -> list[str | BaseException | None]:
        if len(finals) > 1:
            try:
                return list(await finalize_many(self.pool, self.settings, finals))
            except (asyncpg.PostgresError, GenqError) as exc:
                # Nothing was written. A deadlock with another batch, or one job's refusal,
                # must not fail the others: each goes alone, with its own answer.
                log.warning("finalize_batch_failed", jobs=len(finals), error=repr(exc))
        return list(await asyncio.gather(
            *(finalize(self.pool, self.settings, final) for final in finals),
            return_exceptions=True,
        ))
