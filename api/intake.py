"""The write side of jobs: submit (idempotency record, job row, credit reservation in one
statement, then the queue) and cancel (exactly one refund however often it is called)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.exceptions

from api.errors import JobNotCancelable, JobNotFound, ValidationFailed
from api.reads import TERMINAL_STATUSES, load_job
from api.serialize import job_json
from api.validation import JobCreate, field_error, request_hash
from shared import ledger
from shared.errors import (
    AccountNotFound,
    Conflict,
    GenqError,
    IdempotencyConflict,
    InsufficientCredits,
)
from shared.logging import get_logger
from shared.queue import enqueue_generation
from sql import queries

if TYPE_CHECKING:
    from api.context import ApiContext

log = get_logger(__name__)

# Redis is only the transport: if it does not answer quickly the job stays accepted (queued in
# Postgres, enqueued_at NULL) and the scheduler's sweeper enqueues it later.
ENQUEUE_TIMEOUT_S = 2.0
_ENQUEUE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
# A job can move between queued and running while we cancel; a few tries always settle it.
_CANCEL_TRIES = 3


@dataclass(frozen=True)
class Submitted:
    """The job a submission created, or found under its Idempotency-Key."""

    job: dict[str, Any]
    replayed: bool


def _submit_error(exc: asyncpg.PostgresError, job: JobCreate) -> GenqError | None:
    """The domain error for a refusal of genq_submit (by its constraint), or None."""
    constraint = getattr(exc, "constraint_name", None)
    detail = getattr(exc, "detail", None)
    if constraint == "idempotency_keys_request_mismatch":
        return IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    if constraint == "idempotency_keys_holder_gone":
        # The holder's row vanished (its job was deleted): rare enough to ask for a new key.
        return Conflict("this Idempotency-Key cannot be reused; send a new one")
    if constraint == "genq_submit_model_unknown":
        return ValidationFailed(
            "unknown model",
            details=[field_error("model", f"no enabled model {job.model!r}; see /v1/models")],
        )
    if constraint == "genq_submit_too_many_outputs":
        return ValidationFailed(
            "too many outputs",
            details=[field_error(
                "num_outputs", f"{job.model} makes at most {detail} outputs per job"
            )],
        )
    if constraint == "credit_accounts_balance_nonnegative":
        # Nothing was written. Tell the client what it would need.
        short = json.loads(detail) if detail else {}
        return InsufficientCredits(
            "not enough credits for this job",
            details={"price": short.get("price"), "balance": short.get("balance")},
        )
    if isinstance(exc, asyncpg.NoDataFoundError):
        return AccountNotFound(str(getattr(exc, "message", exc)))
    return None


async def submit_job(
    ctx: ApiContext, user_id: uuid.UUID, job: JobCreate, key: str | None
) -> Submitted:
    """Accept a job: reserve its price and queue it. Replays return the original job.

    The database work is one statement (``genq_submit``, in its own transaction); only the
    enqueue and its ``enqueued_at`` hint follow it.
    """
    job_id = uuid.uuid4()
    digest = request_hash(job) if key is not None else None
    settings = ctx.settings
    async with ctx.pool.acquire() as conn:
        try:
            row = await conn.fetchrow(
                queries["submit_job"], job_id, user_id, job.model, job.prompt,
                job.num_outputs, job.params, job.seed, settings.max_attempts, key, digest,
                float(settings.idempotency_ttl_s), float(settings.reservation_ttl_s),
            )
        except (asyncpg.UniqueViolationError, asyncpg.CheckViolationError,
                asyncpg.NoDataFoundError) as exc:
            mapped = _submit_error(exc, job)
            if mapped is None:
                raise
            raise mapped from exc
        assert row is not None
        replayed = await load_job(conn, user_id, row["job_id"]) if row["replayed"] else None
    # Every enqueue happens with the connection back in the pool: holding one across the Redis
    # round trip (and the second connection _enqueue takes) could exhaust the pool under load.
    if replayed is not None:
        return Submitted(await _enqueue_replay(ctx, replayed), replayed=True)
    enqueued_at = await _enqueue(ctx, job_id)
    price = row["reserved"]
    log.info("job_accepted", job_id=str(job_id), model=job.model, price=price)
    return Submitted(job_json({
        "id": job_id, "status": "queued", "model": job.model, "prompt": job.prompt,
        "num_outputs": job.num_outputs, "params": row["params"], "seed": job.seed,
        "price_per_output": row["price_per_output"], "error_code": None,
        "error_message": None, "created_at": row["created_at"], "started_at": None,
        "finished_at": None, "enqueued_at": enqueued_at, "cancel_requested_at": None,
        "reserved": price, "captured": 0, "refunded": 0,
    }), replayed=False)


async def _enqueue_replay(ctx: ApiContext, found: dict[str, Any]) -> dict[str, Any]:
    """The original job of a replayed request, enqueued again if Redis missed it first."""
    if found["status"] == "queued" and found["enqueued_at"] is None:
        enqueued_at = await _enqueue(ctx, uuid.UUID(found["id"]))
        if enqueued_at is not None:
            found["enqueued_at"] = enqueued_at.isoformat()
    return found


async def _enqueue(ctx: ApiContext, job_id: uuid.UUID) -> datetime | None:
    """Put a committed job on the arq queue and record when; None if Redis is unavailable."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await enqueue_generation(ctx.redis, ctx.settings.queue_name, job_id)
    except _ENQUEUE_ERRORS as exc:
        log.warning("enqueue_failed", job_id=str(job_id), error=repr(exc))
        return None
    enqueued_at = await ctx.pool.fetchval(queries["mark_job_enqueued"], job_id)
    assert enqueued_at is None or isinstance(enqueued_at, datetime)
    return enqueued_at


async def cancel_job(
    ctx: ApiContext, user_id: uuid.UUID, job_id: uuid.UUID
) -> tuple[int, dict[str, Any]]:
    """Cancel a job: queued -> canceled and refunded now (200); running -> the worker is asked
    to stop (202); finished -> :class:`JobNotCancelable`. Concurrent calls refund once."""
    async with ctx.pool.acquire() as conn:
        for _ in range(_CANCEL_TRIES):
            async with conn.transaction():
                row = await conn.fetchrow(queries["cancel_queued_job"], job_id, user_id)
                if row is not None:
                    if row["reservation_id"] is not None:
                        await ledger.refund(conn, row["reservation_id"])
                    status_code = 200
            if row is not None:
                log.info("job_canceled", job_id=str(job_id))
                break
            if await conn.fetchval(queries["request_job_cancel"], job_id, user_id) is not None:
                log.info("job_cancel_requested", job_id=str(job_id))
                status_code = 202
                break
            current = await conn.fetchval(queries["get_job_status"], job_id, user_id)
            if current is None:
                raise JobNotFound(f"no job {job_id}")
            if current in TERMINAL_STATUSES:
                raise JobNotCancelable(
                    f"the job is already {current}", details={"status": current}
                )
        else:
            raise Conflict("the job kept changing state; try again")
        return status_code, await load_job(conn, user_id, job_id)
