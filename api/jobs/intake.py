"""The write side of jobs: submit (idempotency record, job row, credit reservation in one
statement, then the queue) and cancel (exactly one refund however often it is called)."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.exceptions

from api.assets.reads import Sign
from api.errors import JobNotCancelable, JobNotFound, ValidationFailed
from api.jobs.models import LATER_FIELDS, Job, JobCreate
from api.jobs.reads import load_job, load_new_jobs
from api.validation import field_error, request_hash
from shared import ledger
from shared.batch import Batcher
from shared.catalog import ModelRules
from shared.dispatch import dispatch
from shared.errors import (
    AccountDisabled,
    AccountNotFound,
    Conflict,
    GenqError,
    IdempotencyConflict,
    InsufficientCredits,
    RateLimited,
)
from shared.limits import check_submit_rate
from shared.logging import get_logger
from shared.plans import dispatch_on
from shared.queue import enqueue_generations
from shared.retry import retry
from shared.types import TERMINAL_STATUSES, JobStatus
from sql import queries

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from api.catalog.cache import CatalogCache
    from api.context import ApiContext
    from shared.db import Pool
    from shared.settings import Settings

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

    job: Job
    replayed: bool


# Group commit (shared/batch.py): concurrent submissions share one genq_submit_batch call, and
# concurrent enqueues one Redis pipeline and one UPDATE. A batch is one transaction (set-based
# since 0027_set_based_submit.sql, without a subtransaction per item).
SUBMIT_BATCH = 32
SUBMIT_FLUSHES = 8
ENQUEUE_BATCH = 64
ENQUEUE_FLUSHES = 2
# A lone submission that still meets a deadlock (see 0007_submit_batch.sql) tries again.
_DEADLOCK_TRIES = 3
# The SQLSTATE genq_submit raises for a user without a credit account.
NO_DATA_FOUND = "P0002"


# A job sent without a seed gets one below this, chosen at submit and recorded on the job, so
# every output can be made again from its job (31 bits: every provider takes it).
CHOSEN_SEED_BOUND = 2**31

# The constraint genq_submit names when the model changed since the intake checked the request.
CATALOG_CHANGED = "genq_submit_catalog_changed"
# How often a submission is checked again against a reloaded catalog before giving up.
_CATALOG_TRIES = 3


@dataclass(frozen=True)
class SubmitItem:
    """One submission waiting for its batch, its params checked and priced against the model's
    ``revision``."""

    job_id: uuid.UUID
    user_id: uuid.UUID
    job: JobCreate
    key: str | None
    digest: str | None
    params: dict[str, Any]
    price_per_output: int
    revision: str

    @classmethod
    def checked(cls, job_id: uuid.UUID, user_id: uuid.UUID, job: JobCreate, key: str | None,
                digest: str | None, rules: ModelRules) -> SubmitItem:
        """The item for ``job``, checked with ``rules``; :class:`ValidationFailed` naming each
        bad param otherwise."""
        checked = rules.check(job.params)
        if isinstance(checked, list):
            raise ValidationFailed(
                "invalid params", details=[field_error(f, m) for f, m in checked]
            )
        return cls(job_id, user_id, job, key, digest, checked.params, checked.price_per_output,
                   rules.revision)

    def payload(self, item: int) -> dict[str, Any]:
        """Its entry in genq_submit_batch's items."""
        job = self.job
        return {"item": item, "job": str(self.job_id), "user_id": str(self.user_id),
                "model": job.model, "prompt": job.prompt, "num_outputs": job.num_outputs,
                "params": self.params, "seed": job.seed, "key": self.key,
                "request_hash": self.digest, "price_per_output": self.price_per_output,
                "revision": self.revision}


class SubmitRefused(Exception):
    """genq_submit refused one item: its SQLSTATE, named constraint, detail and message."""

    def __init__(self, state: str, constraint: str | None, detail: str | None,
                 message: str) -> None:
        super().__init__(message)
        self.state, self.constraint, self.detail = state, constraint, detail


def _submit_error(refused: SubmitRefused, job: JobCreate) -> GenqError | None:
    """The domain error for a refusal of genq_submit (by its constraint), or None."""
    constraint, detail = refused.constraint, refused.detail
    if constraint == "idempotency_keys_request_mismatch":
        return IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    if constraint == "idempotency_keys_holder_gone":
        # The holder's row vanished (its job was deleted): rare enough to ask for a new key.
        return Conflict("this Idempotency-Key cannot be reused; send a new one")
    if constraint == "genq_submit_model_unknown":
        return unknown_model(job)
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
    if constraint == "users_account_disabled":
        # Authenticated just before an admin disabled the user (0026_operations.sql).
        return AccountDisabled("this account is disabled")
    if refused.state == NO_DATA_FOUND:
        return AccountNotFound(str(refused))
    return None


def unknown_model(job: JobCreate) -> ValidationFailed:
    """The 422 for a model that is not in the catalog or not enabled."""
    return ValidationFailed(
        "unknown model",
        details=[field_error("model", f"no enabled model {job.model!r}; see /v1/models")],
    )


class IntakeBatches:
    """The intake's group commit: one per app, opened with its pools."""

    def __init__(self, pool: Pool, redis: ArqRedis, settings: Settings) -> None:
        self.pool, self.redis, self.settings = pool, redis, settings
        # One account's items never in two batches at once: a batch locks its accounts until
        # its commit, so a second one would only wait for it.
        self.submit: Batcher[SubmitItem, asyncpg.Record] = Batcher(
            self.submit_many, max_batch=SUBMIT_BATCH, max_flushes=SUBMIT_FLUSHES,
            key=lambda item: item.user_id,
        )
        self.enqueue: Batcher[uuid.UUID, datetime | None] = Batcher(
            self._enqueue, max_batch=ENQUEUE_BATCH, max_flushes=ENQUEUE_FLUSHES
        )
        # With running caps or tiers: (job, user) -> when the job was dispatched, or None if
        # it waits for a place.
        self.dispatch_on = dispatch_on(settings)
        self.dispatch: Batcher[tuple[uuid.UUID, uuid.UUID], datetime | None] = Batcher(
            self._dispatch, max_batch=ENQUEUE_BATCH, max_flushes=ENQUEUE_FLUSHES
        )
        # A user's plan rate, read for every concurrent miss of the cache at once.
        self.plan_rate: Batcher[uuid.UUID, int | None] = Batcher(
            self._plan_rates, max_batch=ENQUEUE_BATCH, max_flushes=ENQUEUE_FLUSHES
        )
        # A job just accepted: queued (or dispatched), then read back for its answer, in one
        # flush for many: (job, user) -> the job as the API shows it.
        self.accepted: Batcher[tuple[uuid.UUID, uuid.UUID], Job] = Batcher(
            self._accept, max_batch=ENQUEUE_BATCH, max_flushes=ENQUEUE_FLUSHES
        )

    async def drain(self) -> None:
        """Let started batches finish (before the pools close)."""
        await self.submit.drain()
        await self.enqueue.drain()
        await self.dispatch.drain()
        await self.accepted.drain()
        await self.plan_rate.drain()

    async def submit_many(
        self, items: list[SubmitItem]
    ) -> list[asyncpg.Record | BaseException]:
        """One genq_submit_batch call: a row per accepted or replayed item, a
        :class:`SubmitRefused` per refused one, in the order of ``items``. A batch that meets a
        deadlock (with another path that locks accounts) goes again item by item."""
        try:
            return await self._submit_batch(items)
        except asyncpg.DeadlockDetectedError:
            # The whole batch rolled back. Its items go again one by one, each in its own
            # transaction, as concurrently as the pool allows.
            log.warning("submit_batch_deadlock", items=len(items))
            return list(await asyncio.gather(*(self._submit_alone(it) for it in items),
                                             return_exceptions=True))

    async def _submit_batch(
        self, items: list[SubmitItem]
    ) -> list[asyncpg.Record | BaseException]:
        """genq_submit_batch in a transaction of its own (the statement alone, when no item has
        a webhook) and, in the same transaction, the webhooks of the jobs it accepted (a
        replayed or refused item writes none); a deadlock is raised, not retried."""
        s = self.settings
        args = ([it.payload(i) for i, it in enumerate(items)], s.max_attempts,
                float(s.idempotency_ttl_s), float(s.reservation_ttl_s))
        if all(it.job.webhook is None for it in items):
            # One statement is its own transaction: no BEGIN and COMMIT round trips.
            rows = await self.pool.fetch(queries["submit_jobs"], *args)
        else:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(queries["submit_jobs"], *args)
                hooks = []
                for row in rows:
                    item = items[row["item"]]
                    webhook = item.job.webhook
                    if (webhook is not None and row["error_state"] is None
                            and not row["replayed"]):
                        hooks.append({"job": str(item.job_id), "url": webhook[0],
                                      "events": webhook[1]})
                if hooks:
                    await conn.execute(queries["add_job_webhooks"], hooks)
        by_item = {row["item"]: row for row in rows}
        results: list[asyncpg.Record | BaseException] = []
        for i in range(len(items)):
            row = by_item[i]
            if row["error_state"] is None:
                results.append(row)
            else:
                results.append(SubmitRefused(row["error_state"], row["error_constraint"],
                                             row["error_detail"], row["error_message"]))
        return results

    async def _submit_alone(self, item: SubmitItem) -> asyncpg.Record | BaseException:
        """One item in its own batch, tried again at once after a deadlock, at most
        ``_DEADLOCK_TRIES`` times in all; then the deadlock is its result."""
        async def once() -> asyncpg.Record | BaseException:
            return (await self._submit_batch([item]))[0]

        # At once: the other transaction of a deadlock has been let through.
        return await retry(
            once, what="submit", attempts=_DEADLOCK_TRIES, base_s=0.0, max_s=0.0,
            retry_on=lambda exc: isinstance(exc, asyncpg.DeadlockDetectedError),
        )

    async def _dispatch(
        self, items: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[datetime | None]:
        """Dispatch the users' oldest waiting jobs up to their cap (these jobs among them,
        if the cap leaves room); when each of these was dispatched, None if it waits."""
        s = self.settings
        try:
            done = await dispatch(self.pool, self.redis, s.queue_name,
                                  [user for _, user in items], s.user_max_running)
        except _ENQUEUE_ERRORS as exc:
            log.warning("dispatch_failed", error=repr(exc))
            return [None] * len(items)
        return [done.get(job_id) for job_id, _ in items]

    async def _plan_rates(self, users: list[uuid.UUID]) -> list[int | None]:
        rows = await self.pool.fetch(queries["user_submit_rates"], users)
        rates = {row["id"]: row["submits_per_minute"] for row in rows}
        return [rates.get(user) for user in users]

    async def _accept(
        self, items: list[tuple[uuid.UUID, uuid.UUID]]
    ) -> list[Job | BaseException]:
        """Queue new jobs as :meth:`queue` does, then read them as they are now."""
        if self.dispatch_on:
            await self._dispatch(items)
        else:
            await self._enqueue([job_id for job_id, _ in items])
        return await load_new_jobs(self.pool, items)

    async def queue(self, job_id: uuid.UUID, user_id: uuid.UUID) -> datetime | None:
        """Put an accepted job on the queue now, or with the dispatch on (running caps or
        tiers), when its user has room; when it was, None if not yet."""
        if self.dispatch_on:
            return await self.dispatch((job_id, user_id))
        return await self.enqueue(job_id)

    async def _enqueue(self, job_ids: list[uuid.UUID]) -> list[datetime | None]:
        """Put committed jobs on the arq queue and record when; None for all if Redis is
        unavailable (the sweeper enqueues them later)."""
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                await enqueue_generations(self.redis, self.settings.queue_name, job_ids)
        except _ENQUEUE_ERRORS as exc:
            log.warning("enqueue_failed", jobs=[str(j) for j in job_ids], error=repr(exc))
            return [None] * len(job_ids)
        rows = await self.pool.fetch(queries["mark_jobs_enqueued"], job_ids)
        marked: dict[uuid.UUID, datetime] = {row["id"]: row["enqueued_at"] for row in rows}
        return [marked.get(job_id) for job_id in job_ids]


# Plan rates remembered per process, at most this many users (then forgotten all at once).
_PLAN_RATE_ENTRIES = 10_000


async def _plan_rate(ctx: ApiContext, user_id: uuid.UUID) -> int | None:
    """The user's plan's submissions per minute (None: the setting), read at most once per
    ``GENQ_API_KEY_CACHE_TTL_S`` per user and process."""
    now = time.monotonic()
    cached = ctx.plan_rates.get(user_id)
    if cached is not None and cached[1] > now:
        return cached[0]
    rate = await ctx.batches.plan_rate(user_id)
    if len(ctx.plan_rates) >= _PLAN_RATE_ENTRIES:
        ctx.plan_rates.clear()
    ctx.plan_rates[user_id] = (rate, now + ctx.settings.api_key_cache_ttl_s)
    return rate if isinstance(rate, int) else None


async def admit_submission(ctx: ApiContext, user_id: uuid.UUID) -> None:
    """Count a submission against the user's rate (their plan's ``submits_per_minute``, else
    ``GENQ_USER_SUBMITS_PER_MINUTE``): over it, :class:`RateLimited` before anything is
    written. Redis out of reach admits the request (the intake keeps accepting jobs while
    Redis is down)."""
    plan_rate = await _plan_rate(ctx, user_id)
    per_minute = plan_rate if plan_rate is not None else ctx.settings.user_submits_per_minute
    if per_minute <= 0:
        return
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            wait_s = await check_submit_rate(ctx.redis, ctx.settings.queue_name, user_id,
                                             per_minute)
    except _ENQUEUE_ERRORS as exc:
        log.warning("rate_check_failed", error=repr(exc))
        return
    if wait_s is not None:
        raise RateLimited(
            f"more than {per_minute} submissions in this minute; try again later",
            retry_after_s=wait_s,
            details={"limit_per_minute": per_minute, "retry_after_s": math.ceil(wait_s)},
        )


@dataclass(frozen=True)
class Intake:
    """The write side of jobs, over the app's open pool, group commit and catalog snapshot;
    ``sign`` makes an output's signed ``content_url``."""

    pool: Pool
    batches: IntakeBatches
    catalog: CatalogCache
    sign: Sign

    async def submit(self, user_id: uuid.UUID, job: JobCreate, key: str | None) -> Submitted:
        """Accept a job: reserve its price and queue it. Replays return the original job.

        The params are checked and priced first, against the catalog snapshot, before anything is
        written. The database work is one statement (``genq_submit``, in its batch's transaction);
        only the enqueue and its ``enqueued_at`` hint follow it.
        """
        job_id = uuid.uuid4()
        # The Idempotency-Key is bound to the body as the client sent it; a seed chosen here comes
        # after, so a replay of a seedless body finds the original job (and its seed).
        digest = request_hash(job, LATER_FIELDS) if key is not None else None
        if job.seed is None:
            job = job.model_copy(update={"seed": secrets.randbelow(CHOSEN_SEED_BOUND)})
        for _ in range(_CATALOG_TRIES):
            generation = self.catalog.generation
            rules = await self.catalog.lookup(job.model)
            if rules is None:
                raise unknown_model(job)
            item = SubmitItem.checked(job_id, user_id, job, key, digest, rules)
            try:
                row = await self.batches.submit(item)
                break
            except SubmitRefused as exc:
                if exc.constraint == CATALOG_CHANGED:
                    # The model changed since the snapshot: check again against the new one.
                    await self.catalog.refresh(generation)
                    continue
                mapped = _submit_error(exc, job)
                if mapped is None:
                    raise
                raise mapped from exc
        else:
            raise Conflict("the model catalog kept changing during this request; try again")
        if row["replayed"]:
            async with self.pool.acquire() as conn:
                replayed = await load_job(conn, user_id, row["job_id"], sign=self.sign)
            return Submitted(await self._enqueue_replay(user_id, replayed), replayed=True)
        log.info("job_accepted", job_id=str(job_id), model=job.model, price=row["reserved"])
        # Queued, then read back through the one definition of the job response (a new job
        # has no outputs).
        return Submitted(await self.batches.accepted((job_id, user_id)), replayed=False)

    async def _enqueue_replay(self, user_id: uuid.UUID, found: Job) -> Job:
        """The original job of a replayed request, enqueued again if Redis missed it first (or
        dispatched, if its user has room)."""
        if found.status == JobStatus.QUEUED and found.enqueued_at is None:
            enqueued_at = await self.batches.queue(found.id, user_id)
            if enqueued_at is not None:
                return found.model_copy(update={"enqueued_at": enqueued_at})
        return found


    async def cancel(self, user_id: uuid.UUID, job_id: uuid.UUID) -> tuple[int, Job]:
        """Cancel a job: queued -> canceled and refunded now (200); running -> the worker is asked
        to stop (202); finished -> :class:`JobNotCancelable`. Concurrent calls refund once."""
        async with self.pool.acquire() as conn:
            for _ in range(_CANCEL_TRIES):
                async with conn.transaction():
                    row = await conn.fetchrow(queries["cancel_queued_job"], job_id, user_id)
                    if row is not None:
                        if row["reservation_id"] is not None:
                            await ledger.refund(conn, row["reservation_id"])
                        status_code = 200
                if row is not None:
                    log.info("job_canceled", job_id=str(job_id))
                    if self.batches.dispatch_on:
                        # A dispatched job leaving the queue frees a place for the next one.
                        await self.batches.dispatch((job_id, user_id))
                    break
                if await conn.fetchval(queries["request_job_cancel"], job_id, user_id) is not None:
                    log.info("job_cancel_requested", job_id=str(job_id))
                    status_code = 202
                    break
                current = await conn.fetchval(queries["get_job_status"], job_id, user_id)
                if current is None:
                    raise JobNotFound.of(job_id)
                if current in TERMINAL_STATUSES:
                    raise JobNotCancelable(
                        f"the job is already {current}", details={"status": current}
                    )
            else:
                raise Conflict("the job kept changing state; try again")
            return status_code, await load_job(conn, user_id, job_id, sign=self.sign)
