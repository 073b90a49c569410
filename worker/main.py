"""The arq worker: its settings, its start and stop hooks, and ``genq worker``.

arq semantics this relies on (arq 0.28):

- ``keep_result=0``: Postgres holds the truth, and a kept result would make arq refuse a later
  enqueue of the same job id (the API and the lease recovery both enqueue with ``_job_id``).
- ``max_tries`` is large: arq counts kills and shutdown hand-backs as tries; the job's own
  ``attempt``/``max_attempts`` in Postgres decides when to give up.
- Shutdown (SIGTERM/SIGINT) stops picking jobs and waits ``shutdown_grace_s`` for running ones;
  then arq cancels them, each hands its lease back, and arq re-queues it. The next delivery
  re-claims the job and resumes the same prediction.
- The poll loop is arq's, woken by every enqueue (``worker/wake.py``): an idle worker starts a
  new job at once instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from typing import Any

import uvloop
from arq import Retry
from arq.worker import Worker, func

from shared.catalog import load_catalog
from shared.logging import get_logger
from shared.metrics import MetricsServer, serve_metrics
from shared.queue import GENERATION_FUNCTION, redis_settings
from shared.services import running_services
from shared.settings import Settings
from worker.context import WorkerContext
from worker.generation import JobBusy, JobRetry, process_job
from worker.recovery import recovery_loop
from worker.wake import WakeableWorker

log = get_logger(__name__)

# arq's try counter also counts kills and hand-backs; Postgres' attempt limit is the real one.
ARQ_MAX_TRIES = 1000
CTX_KEY = "genq"


async def run_generation(ctx: dict[str, Any], job_id: str) -> str:
    """The arq job: one delivery of generation job ``job_id``."""
    import uuid

    wc: WorkerContext = ctx[CTX_KEY]
    try:
        return await process_job(wc, uuid.UUID(job_id))
    except JobBusy as exc:
        raise Retry(defer=exc.retry_after_s + 0.1) from exc
    except JobRetry as exc:
        raise Retry(defer=exc.defer_s) from exc


def job_timeout_s(settings: Settings) -> float:
    """arq's per-job timeout: the slowest model, then staging, then a margin.

    Never below the lease, so arq's in-progress key (timeout + 10 s) outlives a dead worker's
    lease and a redelivery always finds the lease expired.
    """
    slowest = max((m.timeout_s for m in load_catalog(settings.models_file)), default=60)
    return max(slowest + settings.download_timeout_s + settings.job_timeout_margin_s,
               settings.lease_s)


async def on_startup(ctx: dict[str, Any]) -> None:
    """Open the pool, HTTP client and providers; start the lease recovery loop."""
    settings: Settings = ctx["settings"]
    wc = await WorkerContext.open(settings, redis=ctx["redis"])
    ctx[CTX_KEY] = wc
    ctx["genq_metrics"] = serve_metrics(wc.metrics, settings, "worker")
    ctx["genq_recovery"] = asyncio.create_task(recovery_loop(
        wc.recovery_pool, ctx["redis"], settings
    ))
    log.info("worker_started", worker_id=wc.worker_id, queue=settings.queue_name,
             max_jobs=settings.max_jobs)


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """Stop the recovery loop; close everything on_startup opened."""
    task: asyncio.Task[None] | None = ctx.get("genq_recovery")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    server: MetricsServer | None = ctx.get("genq_metrics")
    if server is not None:
        server.close()
    wc: WorkerContext | None = ctx.get(CTX_KEY)
    if wc is not None:
        await wc.close()
        log.info("worker_stopped", worker_id=wc.worker_id)


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker` (the WorkerSettings of genq)."""
    if settings.redis_url is None:
        raise ValueError("settings.redis_url must be resolved before the worker starts")
    timeout = job_timeout_s(settings)
    return {
        "functions": [func(run_generation, name=GENERATION_FUNCTION, timeout=timeout,
                           keep_result=0, max_tries=ARQ_MAX_TRIES)],
        "queue_name": settings.queue_name,
        "redis_settings": redis_settings(settings.redis_url),
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay_s,
        "job_timeout": timeout,
        "keep_result": 0,
        "max_tries": ARQ_MAX_TRIES,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"settings": settings},
        "handle_signals": True,
        # arq takes whole seconds here; round up so a grace of 0.5 s still waits.
        "job_completion_wait": int(-(-settings.shutdown_grace_s // 1)),
        "health_check_interval": 60,
    }


async def close_worker(worker: Worker) -> None:
    """``Worker.close()``, minus the DeprecationWarning arq 0.28 triggers in redis-py 5."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Call to deprecated close", category=DeprecationWarning
        )
        await worker.close()


async def serve(settings: Settings) -> None:
    """Run an arq worker until SIGTERM/SIGINT. Build it here: arq binds to the running loop."""
    if settings.log_level != "debug":
        # arq's own two lines per job (start, end) repeat genq's job_claimed and job_finished;
        # its warnings and errors still show.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    worker = WakeableWorker(**worker_options(settings))
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # The signal handler cancels arq's main task once running jobs finished or were
        # handed back; that is a normal stop.
        pass
    finally:
        await close_worker(worker)


async def worker_command(settings: Settings) -> int:
    """``genq worker``: resolve services, migrate, and serve."""
    async with running_services(settings) as running:
        await serve(running.settings)
    return 0


def run_worker_command(settings: Settings) -> int:
    """:func:`worker_command` on a uvloop event loop. arq binds to the loop that runs it (the
    worker is built inside :func:`serve`), so choosing the loop here is enough."""
    return uvloop.run(worker_command(settings))
