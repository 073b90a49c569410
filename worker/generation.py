"""The generation job: claim, call the provider, stage the outputs, finalize.

arq runs a job at least once, so every step is safe to repeat:

- the claim is one conditional UPDATE; a duplicate delivery finds nothing and stops;
- the provider's prediction id is stored before waiting, and a later attempt resumes it;
- outputs land under deterministic keys (a rerun overwrites them atomically);
- the terminal transition, the asset rows and the ledger settlement are one transaction,
  fenced by the attempt number, and the ledger settles a reservation exactly once; a cancel
  requested before that transaction commits wins inside it.

Errors: the claim and the final write are retried a few times on connection-class errors
(``shared.retry.retry_transient``). Past that, infrastructure trouble (PostgreSQL, Redis, the
network, the disk) hands the job back to be run again later; anything else a job meets (a
provider refusing its params, a bug, a bad file) ends it as ``failed`` at once, refunded, with a
code and a message for the user and the traceback in the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from structlog.contextvars import bound_contextvars

from shared.batch import retrieve_exception
from shared.catalog import PriceTier, price_per_output, stored_params_problems
from shared.errors import GenqError, NotFound
from shared.limits import ModelLimit, ModelSlot
from shared.logging import get_logger
from shared.retry import backoff_delay, is_transient, retry_transient
from shared.types import JobStatus
from worker import jobs
from worker.context import WorkerContext
from worker.jobs import ClaimedJob, Outcome
from worker.providers.base import (
    GenerationRequest,
    Output,
    Provider,
    ProviderCanceled,
    ProviderFailed,
    ProviderUnavailable,
)
from worker.staging import OutputRejected, StagedAsset

log = get_logger(__name__)

T = TypeVar("T")

CANCELED_BY_USER = Outcome(JobStatus.CANCELED, "canceled", "The job was canceled.")
INTERNAL_ERROR = Outcome(
    JobStatus.FAILED, "internal_error", "The job failed because of an internal error.",
)
# How long a delivery whose claim could not reach PostgreSQL (after its own retries) waits
# before arq runs it again.
CLAIM_RETRY_DEFER_S = 2.0


class WorkerSignal(Exception):
    """Base of the worker's control-flow signals: how one step tells the arq job what to do
    next. Not errors for a user: none of them carries an error code or reaches a job row."""


class JobBusy(WorkerSignal):
    """Another worker holds a live lease on this job: look again when it runs out."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"another worker holds the job for {retry_after_s:.1f} s more")
        self.retry_after_s = retry_after_s


class JobRetry(WorkerSignal):
    """This attempt hit an unexpected error and handed the job back; run it again later."""

    def __init__(self, defer_s: float) -> None:
        super().__init__(f"retry in {defer_s:.1f} s")
        self.defer_s = defer_s


class UnknownModel(NotFound):
    """The job's model is no longer in the catalog."""

    code = "unknown_model"


class LeaseLost(WorkerSignal):
    """Another attempt took the job over; this one must stop without writing."""


async def _reach_db(op: Callable[[], Awaitable[T]], what: str) -> T:
    """``op()`` with :func:`retry_transient`; if PostgreSQL stays out of reach, the delivery is
    kept (arq runs it again shortly) instead of being dropped."""
    try:
        return await retry_transient(op, what=what)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("job_deferred", step=what, error=repr(exc))
        raise JobRetry(CLAIM_RETRY_DEFER_S) from exc


async def process_job(wc: WorkerContext, job_id: uuid.UUID) -> str:
    """Run one delivery of a job; returns what happened (a status, or why nothing was done)."""
    job = await _reach_db(lambda: wc.batches.claim(job_id), "claim")
    if job is None:
        found = await _reach_db(lambda: jobs.state(wc.pool, job_id), "job_state")
        if found is None:
            log.warning("job_not_found", job_id=str(job_id))
            return "missing"
        if found.status == JobStatus.RUNNING and (found.lease_left_s or 0) > 0:
            raise JobBusy(found.lease_left_s or 0)
        log.info("job_not_claimed", job_id=str(job_id), status=found.status)
        return f"skipped:{found.status}"
    with bound_contextvars(job_id=str(job.id), user_id=str(job.user_id), model=job.model,
                           attempt=job.attempt):
        return await _Run(wc, job).run()


class _Run:
    """One claimed attempt of one job."""

    def __init__(self, wc: WorkerContext, job: ClaimedJob) -> None:
        self.wc = wc
        self.job = job
        self.prediction_id = job.provider_prediction_id
        self.provider: Provider | None = wc.providers.get(job.provider)
        self.staged: list[StagedAsset] = []
        self.cancel_requested = job.cancel_requested_at is not None
        self.lease_lost = False
        # The place this attempt holds under its model's provider limits, while it holds one.
        self.slot: ModelSlot | None = None
        self.claimed_at = time.monotonic()
        self._work_task: asyncio.Task[tuple[Outcome, list[StagedAsset]]] | None = None

    async def run(self) -> str:
        job = self.job
        log.info("job_claimed", resume_prediction=self.prediction_id)
        if job.attempt == 1 and job.queued_s is not None:
            self.wc.metrics.queue_wait.labels(job.model).observe(job.queued_s)
        if job.attempt > job.max_attempts:
            await self._cancel_prediction()
            return await self._finish_or_retry(Outcome(
                JobStatus.FAILED, "attempts_exhausted",
                f"The job was stopped after {job.max_attempts} attempts.",
            ))
        if self.cancel_requested:
            await self._cancel_prediction()
            return await self._finish_or_retry(CANCELED_BY_USER)
        if self.provider is None:
            return await self._finish_or_retry(Outcome(
                JobStatus.FAILED, "unknown_provider",
                f"No provider {job.provider!r} is configured.",
            ))
        work = self._work_task = asyncio.create_task(self._work(self.provider))
        self.wc.leases.hold(job, self._on_beat)
        try:
            outcome, assets = await work
            return await self._finish(outcome, assets)
        except asyncio.CancelledError:
            self.wc.leases.release(job)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Shutdown (or arq's own timeout): hand the job back for the next worker.
                await asyncio.shield(self._hand_back("worker stopping"))
                raise
            if self.cancel_requested:
                await self._cancel_prediction()
                return await self._finish_or_retry(CANCELED_BY_USER)
            log.warning("lease_lost")
            return "lease_lost"
        except LeaseLost:
            await self._cancel_prediction()
            log.warning("lease_lost")
            return "lease_lost"
        except Exception as exc:
            self.wc.leases.release(job)
            return await self._unexpected(exc)
        finally:
            self.wc.leases.release(job)

    async def _work(self, provider: Provider) -> tuple[Outcome, list[StagedAsset]]:
        if self.job.model_ref is None or self.job.model_timeout_s is None:
            raise UnknownModel(f"no model {self.job.model!r}")
        refused = self._params_refused()
        if refused is not None:
            return refused, []
        while True:
            job = self.job
            timeout_s = job.model_timeout_s or 0
            request = GenerationRequest(
                job_id=job.id, model_key=job.ran_model or job.model, ref=job.model_ref or "",
                prompt=job.prompt, num_outputs=job.num_outputs, params=dict(job.params),
                seed=job.seed, base_url=job.model_base_url, api_key_env=job.model_api_key_env,
            )
            try:
                # Waiting for the model's limits is not part of its timeout: that starts once
                # the provider may be called.
                await self._take_slot()
                started = time.monotonic()
                try:
                    async with asyncio.timeout(timeout_s):
                        result = await provider.generate(
                            request, prediction_id=self.prediction_id,
                            on_created=self._on_created,
                            on_queue_position=self._on_queue_position,
                        )
                except BaseException as exc:
                    self._provider_answered(job.provider, provider_outcome(exc), started)
                    raise
                finally:
                    # The provider is done with this call (or it was cut short): the place
                    # goes back, before a fallback takes one of its own model.
                    await asyncio.shield(self._release_slot())
                self._provider_answered(job.provider, "succeeded", started)
            except TimeoutError:
                await self._cancel_prediction()
                return Outcome(JobStatus.FAILED, "timeout",
                               f"The model did not finish within {timeout_s} s."), []
            except ProviderCanceled as exc:
                return Outcome(JobStatus.CANCELED, exc.code, exc.message), []
            except ProviderUnavailable as exc:
                fallback = await self._move_to_fallback(exc)
                if fallback is None:
                    return Outcome(JobStatus.FAILED, exc.code, exc.message), []
                provider = fallback
                continue
            except ProviderFailed as exc:
                return Outcome(JobStatus.FAILED, exc.code, exc.message), []
            except (TypeError, ValueError) as exc:
                # A provider handed params it cannot use (``"width": "abc"``, ``null``): the
                # same job would fail the same way on every attempt.
                log.warning("provider_rejected_params", error=repr(exc), exc_info=exc)
                return Outcome(JobStatus.FAILED, "invalid_params",
                               f"The model could not use the job's params: {_brief(exc)}"), []
            break
        outputs = result.outputs[: job.num_outputs]
        if not outputs:
            return Outcome(JobStatus.FAILED, "no_outputs", "The model returned no outputs."), []
        return await self._stage(outputs)

    def _provider_answered(self, provider: str, outcome: str, started: float) -> None:
        metrics = self.wc.metrics
        metrics.provider_requests.labels(provider, outcome).inc()
        metrics.provider_latency.labels(provider, outcome).observe(time.monotonic() - started)

    async def _take_slot(self) -> None:
        """Wait for a place under the model's ``max_concurrency`` and, when this attempt will
        create a prediction, ``max_per_minute`` (shared by every worker, in Redis)."""
        job, limits = self.job, self.wc.limits
        limit = ModelLimit(job.ran_model or job.model, job.model_max_concurrency,
                           job.model_max_per_minute)
        if limits is None or not limit.limited:
            return
        self.slot = await limits.acquire(limit, new_call=self.prediction_id is None)

    async def _release_slot(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            try:
                await slot.release()
            except Exception as exc:
                # The lease expires on its own.
                log.warning("model_slot_release_failed", error=repr(exc))

    async def _move_to_fallback(self, exc: ProviderUnavailable) -> Provider | None:
        """Move the job to its model's fallback, once, if it has one that can take it: enabled,
        with a configured provider, accepting the job's params, and no dearer than the price
        reserved (the user never pays more than was held). Returns the fallback's provider, or
        None (the job then fails as unavailable)."""
        job = self.job
        if job.ran_model is not None or job.model_fallback is None:
            return None
        key = job.model_fallback
        model = await retry_transient(lambda: jobs.fallback_model(self.wc.pool, key),
                                      what="fallback_model")
        why = None
        provider = None if model is None else self.wc.providers.get(model.provider)
        price = 0
        if model is None or not model.enabled:
            why = "not in the catalog"
        elif provider is None:
            why = f"no provider {model.provider!r} is configured"
        elif stored_params_problems(model.key, model.revision, model.params_schema, job.params):
            why = "it does not accept the job's params"
        else:
            try:
                price = price_per_output(
                    model.price_per_output, [PriceTier.model_validate(t) for t in
                                             model.price_tiers],
                    job.params, per_second=model.price_per_second)
            except ValueError as problem:
                why = str(problem)
            else:
                if price > job.price_per_output:
                    why = (f"it costs {price} per output, more than the "
                           f"{job.price_per_output} reserved")
        if why is not None or model is None or provider is None:
            log.warning("fallback_skipped", fallback=key, reason=why, error=exc.message)
            return None
        await self._cancel_prediction()  # a prediction the primary made before going away
        moved = await retry_transient(
            lambda: jobs.move_to_fallback(self.wc.pool, job, model, price),
            what="move_to_fallback")
        if not moved:
            raise LeaseLost("the job was taken over before it moved to its fallback")
        log.info("job_fallback", fallback=key, price_per_output=price, error=exc.message)
        self.job = dataclasses.replace(
            job, ran_model=model.key, provider=model.provider, model_ref=model.ref,
            model_timeout_s=model.timeout_s, model_params_schema=model.params_schema,
            model_revision=model.revision, model_base_url=model.base_url,
            model_api_key_env=model.api_key_env, model_max_concurrency=model.max_concurrency,
            model_max_per_minute=model.max_per_minute, price_per_output=price,
            provider_prediction_id=None)
        self.provider, self.prediction_id = provider, None
        return provider

    def _params_refused(self) -> Outcome | None:
        """A failure if the stored params no longer match the model's schema (accepted before
        the schema said otherwise): no provider sees them."""
        job = self.job
        if job.model_params_schema is None or job.model_revision is None:
            return None
        problems = stored_params_problems(job.model, job.model_revision,
                                          job.model_params_schema, job.params)
        if not problems:
            return None
        return Outcome(JobStatus.FAILED, "invalid_params",
                       "The job's params do not match the model's params_schema: "
                       + "; ".join(f"{f}: {m}" for f, m in problems))

    async def _stage(self, outputs: list[Output]) -> tuple[Outcome, list[StagedAsset]]:
        """Copy the outputs into storage; fail only if none of them could be kept.

        Each output is counted on the job (a job.output event for live clients) as soon as it
        is stored, while the others download and its variants are made: the count's round
        trip is off the job's path, and it is written before the job's final write."""
        counts: list[asyncio.Task[None]] = []
        try:
            results = await asyncio.gather(
                *(self._stage_one(i, out, counts) for i, out in enumerate(outputs)),
                return_exceptions=True,
            )
            rejected: list[OutputRejected] = []
            for item in results:
                if isinstance(item, StagedAsset):
                    self.staged.append(item)
                elif isinstance(item, OutputRejected):
                    log.warning("output_rejected", code=item.code, reason=item.message)
                    rejected.append(item)
                else:
                    raise item
            if not self.staged:
                first = rejected[0]
                return Outcome(JobStatus.FAILED, first.code, first.message), []
            # Thumbnails, web-size copies and posters, made in the media thread pool.
            made, counted = await asyncio.gather(
                asyncio.gather(*(self.wc.stager.add_variants(asset) for asset in self.staged)),
                asyncio.gather(*counts, return_exceptions=True),
            )
            for result in counted:
                if isinstance(result, BaseException):
                    raise result
            self.staged = list(made)
            return Outcome(JobStatus.SUCCEEDED), list(self.staged)
        finally:
            for task in counts:
                # Left running when the job stops early (a cancel): its statement ends on its
                # own (the attempt fences it), and what it raised is not left unread.
                task.add_done_callback(retrieve_exception)

    async def _stage_one(self, index: int, output: Output,
                         counts: list[asyncio.Task[None]]) -> StagedAsset:
        """Stage one output and start counting it on the job (added to ``counts``)."""
        staged = await self.wc.stager.stage(self.job.user_id, self.job.id, index, output)
        counts.append(asyncio.create_task(self._count_staged()))
        return staged

    async def _count_staged(self) -> None:
        """Count one more output in storage on the job; a count that cannot be written only
        leaves its job.output event out."""
        try:
            await jobs.count_output_staged(self.wc.pool, self.job)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("output_count_not_saved", error=repr(exc))

    async def _on_created(self, prediction_id: str) -> None:
        self.prediction_id = prediction_id
        # Losing this write means the next attempt pays for a second prediction.
        saved = await retry_transient(
            lambda: jobs.set_prediction_id(self.wc.pool, self.job, prediction_id),
            what="save_prediction_id",
        )
        if not saved:
            raise LeaseLost("the job was taken over before the prediction id was saved")

    async def _on_queue_position(self, position: int | None) -> None:
        """Show the job's place in the provider's queue; a write that fails only delays it."""
        try:
            await jobs.set_provider_queue_position(self.wc.pool, self.job, position)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("queue_position_not_saved", error=repr(exc))

    def _on_beat(self, ours: bool, cancel_at: datetime | None) -> Coroutine[Any, Any, None] | None:
        """What the worker's heartbeat (``worker/leases.py``) found for this attempt: the lease
        lost or a cancel requested stop the work; otherwise the model slot is renewed too."""
        work = self._work_task
        if not ours:
            self.lease_lost = True
            if work is not None:
                work.cancel()
            return None
        if cancel_at is not None:
            log.info("cancel_requested")
            self.cancel_requested = True
            if work is not None:
                work.cancel()
            return None
        return self._renew_slot() if self.slot is not None else None

    async def _renew_slot(self) -> None:
        if self.slot is not None:
            try:
                await self.slot.renew()
            except Exception as exc:
                log.warning("model_slot_renew_failed", error=repr(exc))

    async def _cancel_prediction(self) -> None:
        if self.prediction_id is not None and self.provider is not None:
            await self.provider.cancel(self.prediction_id, ref=self.job.model_ref)

    async def _finish(self, outcome: Outcome, assets: list[StagedAsset] | None = None) -> str:
        assets = assets or []
        if outcome.status == JobStatus.SUCCEEDED:
            # fsync before the asset rows commit: after a power loss no row points at a
            # name that was lost.
            await retry_transient(lambda: self.wc.stager.persist(assets), what="persist")
        final = jobs.Final(self.job, outcome, assets)
        status = await retry_transient(lambda: self.wc.batches.finalize(final), what="finalize")
        if status is None:
            # Another attempt owns the job now, and output keys are the same for every attempt:
            # these files may be the ones its asset rows point at. Leave them; a file no row
            # claims is removed by the orphan sweep.
            log.warning("lease_lost_at_finalize")
            return "lease_lost"
        metrics = self.wc.metrics
        metrics.jobs_finished.labels(self.job.model, status).inc()
        metrics.run_time.labels(self.job.model, status).observe(
            time.monotonic() - self.claimed_at)
        if self.job.reservation_id is not None:
            self.wc.count_settlement(self.job.reservation_id)
        # The user's place under the running cap is free: their next waiting job can go.
        await self.wc.job_finished(self.job.user_id)
        if status != JobStatus.SUCCEEDED:
            # A failure, or a cancel that won at the final write: no asset row points here.
            await self.wc.stager.discard(self.staged)
        if status != outcome.status:
            log.info("cancel_won_at_finalize", outcome=outcome.status)
        log.info("job_finished", status=status,
                 outputs=len(assets) if status == JobStatus.SUCCEEDED else 0,
                 error_code=outcome.error_code if status == outcome.status else status)
        return status

    async def _finish_or_retry(self, outcome: Outcome) -> str:
        """:meth:`_finish`, with a write that fails handled as any unexpected error."""
        try:
            return await self._finish(outcome)
        except Exception as exc:
            return await self._unexpected(exc)

    async def _hand_back(self, why: str) -> None:
        try:
            await jobs.release_lease(self.wc.pool, self.job)
            log.info("job_handed_back", reason=why, prediction_id=self.prediction_id)
        except Exception as exc:
            # The lease runs out on its own and the job is taken back then.
            log.warning("hand_back_failed", error=repr(exc))

    async def _retry_later(self, exc: BaseException) -> NoReturn:
        """Hand the job back and have arq run it again after a backoff (a new attempt; past
        the last one the next claim fails it as ``attempts_exhausted``, refunded)."""
        await self._hand_back("error")
        s = self.wc.settings
        raise JobRetry(backoff_delay(self.job.attempt, s.provider_backoff_base_s,
                                     s.provider_backoff_max_s)) from exc

    async def _unexpected(self, exc: Exception) -> str:
        """Infrastructure trouble is retried (while attempts remain); anything else ends the
        job as failed now, refunded. If that final write cannot be made either, the job is
        handed back rather than left running until its lease runs out."""
        job = self.job
        if is_transient(exc) and job.attempt < job.max_attempts:
            log.warning("job_retry", error=repr(exc), error_type=type(exc).__name__)
            await self._retry_later(exc)
        log.error("job_error", error=str(exc), error_type=type(exc).__name__, exc_info=exc)
        # A GenqError (a model gone from the catalog, say) carries a code and a message meant
        # for the user; anything else is told as an internal error, never as a traceback.
        outcome = (Outcome(JobStatus.FAILED, exc.code, exc.message) if isinstance(exc, GenqError)
                   else INTERNAL_ERROR)
        try:
            return await self._finish(outcome)
        except Exception as again:
            log.error("finalize_failed", error=repr(again), error_type=type(again).__name__,
                      exc_info=again)
            await self._retry_later(again)


def provider_outcome(exc: BaseException) -> str:
    """The outcome label of a provider call that raised ``exc`` (a few fixed words)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProviderCanceled):
        return "canceled"
    if isinstance(exc, ProviderUnavailable):
        return "unavailable"
    if isinstance(exc, ProviderFailed):
        return "failed"
    if isinstance(exc, asyncio.CancelledError):
        return "interrupted"
    return "error"


def _brief(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
