"""The write side of jobs: submit (idempotency record, job row, credit reservation in one
transaction, then the queue) and cancel (exactly one refund however often it is called)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis.exceptions

from api.errors import JobNotCancelable, JobNotFound, ValidationFailed
from api.reads import TERMINAL_STATUSES, load_job
from api.serialize import job_json
from api.validation import JobCreate, field_error, request_hash
from shared import ledger
from shared.catalog import CatalogModel, get_model
from shared.db import Connection
from shared.errors import Conflict, IdempotencyConflict, InsufficientCredits, NotFound
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


async def _usable_model(conn: Connection, job: JobCreate) -> CatalogModel:
    try:
        model = await get_model(conn, job.model)
    except NotFound:
        model = None
    if model is None or not model.enabled:
        raise ValidationFailed(
            "unknown model",
            details=[field_error("model", f"no enabled model {job.model!r}; see /v1/models")],
        )
    if job.num_outputs > model.max_outputs:
        raise ValidationFailed(
            "too many outputs",
            details=[field_error(
                "num_outputs", f"{job.model} makes at most {model.max_outputs} outputs per job"
            )],
        )
    return model


async def _claim_key(conn: Connection, ctx: ApiContext, user_id: uuid.UUID, key: str,
                     digest: str) -> uuid.UUID | None:
    """None if this request owns the key; the original job's id if it is a replay."""
    claimed = await conn.fetchval(
        queries["claim_idempotency_key"], user_id, key, digest, ctx.settings.idempotency_ttl_s
    )
    if claimed is not None:
        return None
    prior = await conn.fetchrow(queries["get_idempotency_key"], user_id, key)
    if prior is None or prior["job_id"] is None:
        # The holder's row vanished (its job was deleted): rare enough to ask for a new key.
        raise Conflict("this Idempotency-Key cannot be reused; send a new one")
    if prior["request_hash"] != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    job_id = prior["job_id"]
    assert isinstance(job_id, uuid.UUID)
    return job_id


async def submit_job(
    ctx: ApiContext, user_id: uuid.UUID, job: JobCreate, key: str | None
) -> Submitted:
    """Accept a job: reserve its price and queue it. Replays return the original job."""
    job_id = uuid.uuid4()
    digest = request_hash(job)
    async with ctx.pool.acquire() as conn:
        replay_of: uuid.UUID | None = None
        row: dict[str, Any] | None = None
        try:
            async with conn.transaction():
                if key is not None:
                    replay_of = await _claim_key(conn, ctx, user_id, key, digest)
                if replay_of is None:
                    model = await _usable_model(conn, job)
                    row = await _insert_job(conn, ctx, user_id, job_id, job, model, key)
        except InsufficientCredits as exc:
            # Rolled back: nothing was written. Tell the client what it would need.
            account = await ledger.get_account(conn, user_id)
            details = exc.details if isinstance(exc.details, dict) else {}
            raise InsufficientCredits(
                exc.message, details={**details, "balance": account.balance}
            ) from exc
        if row is None:
            assert replay_of is not None
            return Submitted(await _replay(ctx, conn, user_id, replay_of), replayed=True)
        row["enqueued_at"] = await _enqueue(ctx, conn, job_id)
    log.info("job_accepted", job_id=str(job_id), model=job.model, price=row["reserved"])
    return Submitted(job_json(row), replayed=False)


async def _replay(
    ctx: ApiContext, conn: Connection, user_id: uuid.UUID, job_id: uuid.UUID
) -> dict[str, Any]:
    """The original job of a replayed request, enqueued again if Redis missed it first."""
    found = await load_job(conn, user_id, job_id)
    if found["status"] == "queued" and found["enqueued_at"] is None:
        enqueued_at = await _enqueue(ctx, conn, job_id)
        if enqueued_at is not None:
            found["enqueued_at"] = enqueued_at.isoformat()
    return found


async def _insert_job(
    conn: Connection,
    ctx: ApiContext,
    user_id: uuid.UUID,
    job_id: uuid.UUID,
    job: JobCreate,
    model: CatalogModel,
    key: str | None,
) -> dict[str, Any]:
    """Reserve the price and insert the queued job (inside the caller's transaction)."""
    settings = ctx.settings
    price = model.price_per_output * job.num_outputs
    reservation_id = None
    if price > 0:
        try:
            reservation = await ledger.reserve(
                conn,
                user_id,
                price,
                expires_at=datetime.now(UTC) + timedelta(seconds=settings.reservation_ttl_s),
                idempotency_key=f"job:{job_id}",
                job_id=job_id,
            )
        except InsufficientCredits as exc:
            raise InsufficientCredits(
                "not enough credits for this job", details={"price": price}
            ) from exc
        reservation_id = reservation.id
    params = {**model.params, **job.params}
    inserted = await conn.fetchrow(
        queries["insert_job"], job_id, user_id, model.key, model.provider, job.prompt,
        job.num_outputs, params, job.seed, model.price_per_output, reservation_id,
        settings.max_attempts, key,
    )
    assert inserted is not None
    return {
        "id": job_id, "status": "queued", "model": model.key, "prompt": job.prompt,
        "num_outputs": job.num_outputs, "params": params, "seed": job.seed,
        "price_per_output": model.price_per_output, "error_code": None, "error_message": None,
        "created_at": inserted["created_at"], "started_at": None, "finished_at": None,
        "enqueued_at": None, "cancel_requested_at": None,
        "reserved": price, "captured": 0, "refunded": 0,
    }


async def _enqueue(ctx: ApiContext, conn: Connection, job_id: uuid.UUID) -> datetime | None:
    """Put a committed job on the arq queue and record when; None if Redis is unavailable."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await enqueue_generation(ctx.redis, ctx.settings.queue_name, job_id)
    except _ENQUEUE_ERRORS as exc:
        log.warning("enqueue_failed", job_id=str(job_id), error=repr(exc))
        return None
    enqueued_at = await conn.fetchval(queries["mark_job_enqueued"], job_id)
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
