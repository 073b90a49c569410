"""The webhook delivery loop: it sends the outbox (``webhook_deliveries``, written by the
triggers of 0023_webhooks.sql in the job's own transactions) and records every attempt.

It runs in every scheduler process; several loops share the outbox, each claiming due rows
with ``FOR UPDATE SKIP LOCKED`` and pushing them past a lease, so a row is sent by one loop at a
time and a loop that dies leaves its rows to be taken again once their lease runs out: at least
once, with the same ``webhook-id`` on every attempt.

A loop has at most ``GENQ_WEBHOOK_CONCURRENCY`` POSTs in flight, at most
``GENQ_WEBHOOK_PER_RECEIVER`` of them to one receiver (host and port): a receiver that hangs
holds its own places for ``GENQ_WEBHOOK_TIMEOUT_S`` at most and never the others'. The loop only
reads and writes the outbox, so nothing it waits for delays a job.

Each POST resolves the receiver's host again, checks every address (as output downloads do,
``shared.netguard``) and connects to the checked one. 2xx: delivered; 410: gone, nothing more is
sent for the job; anything else (an error status, no answer, a refused address) is tried again
after ``shared.webhooks.retry_delay``, about a day in all.

Each attempt is counted in the process's metrics once its record is written (an increment and
two observations, by event type and outcome only), and every ``BACKLOG_EVERY_S`` the loop
measures the outbox's due deliveries with one query on its partial index.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp
import httpx
from yarl import URL

from api.assets.reads import signed_urls
from api.jobs.models import Job
from shared.batch import Batcher
from shared.db import Pool
from shared.errors import AddressBlocked
from shared.logging import get_logger
from shared.metrics import Metrics
from shared.netguard import PinnedResolver, default_port, pin, resolve_checked
from shared.settings import Settings
from shared.storage import open_storage
from shared.storage.signing import url_signer
from shared.webhooks import EVENTS, ascii_host, new_secret, retry_delay, signature
from sql import queries

log = get_logger(__name__)

# How far a claimed delivery is pushed ahead while its POST runs, past the POST's own limit.
LEASE_MARGIN_S = 30.0
# What of a receiver's error answer or of an exception is kept on the attempt.
MAX_ERROR_CHARS = 300
USER_AGENT = "genq-webhooks"
# Group commit of the attempts' records: at most this many per statement, this many at once.
RECORD_BATCH = 64
RECORD_FLUSHES = 2
# How much of a receiver's answer is read (and dropped) to keep its connection open.
MAX_ANSWER_BYTES = 64 * 1024
# How long a stopping loop lets its POSTs in flight finish.
SHUTDOWN_GRACE_S = 3.0
# How often the loop measures the outbox's backlog for its metrics.
BACKLOG_EVERY_S = 2.0

# An attempt's outcome, as the metrics count it: a 2xx; an error answer or none, tried again;
# the address refused, tried again; 410; the last attempt failed (whatever the reason).
DELIVERED, RETRYING, BLOCKED, GONE, GIVEN_UP = (
    "delivered", "retrying", "blocked", "gone", "given_up")
OUTCOMES = (DELIVERED, RETRYING, BLOCKED, GONE, GIVEN_UP)
EVENT_TYPES = tuple(f"job.{event}" for event in EVENTS)


class Finished(NamedTuple):
    """One attempt as it is recorded (the columns of ``finish_webhook_attempts``)."""

    delivery_id: uuid.UUID
    attempted_at: datetime
    state: str
    delay_s: float
    status_code: int | None
    error: str | None
    duration_ms: float


class Deliverer:
    """One delivery loop over ``pool``: :meth:`run` until cancelled."""

    def __init__(self, pool: Pool, settings: Settings, metrics: Metrics | None = None) -> None:
        self.pool, self.settings = pool, settings
        self.metrics = metrics if metrics is not None else Metrics()
        # Every event type and outcome from the start, at 0, so a rate is defined before the
        # first of each.
        for event in EVENT_TYPES:
            for outcome in OUTCOMES:
                self.metrics.webhook_attempts.labels(event, outcome)
        self._measured_at = -BACKLOG_EVERY_S
        storage = open_storage(settings)
        signer = url_signer(settings, storage)

        async def sign(key: str) -> str:
            return await signer.signed_url(storage, key)

        self.sign = sign
        # aiohttp (its HTTP parser and writer in C) costs about a tenth of httpx's CPU per
        # POST. Connections go only to the address each delivery checked (PinnedResolver); no
        # DNS cache, no cookies kept between receivers, no proxy from the environment.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.webhook_concurrency,
                                           resolver=PinnedResolver(), use_dns_cache=False),
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        # Attempts that end together are recorded by one statement (group commit).
        self.finish: Batcher[Finished, None] = Batcher(
            self._finish_many, max_batch=RECORD_BATCH, max_flushes=RECORD_FLUSHES)
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Where the last claim was held back: the receivers with no free place or that got as
        # many as their free places allowed, and the loop at its own limit. A finished POST
        # wakes the loop before its next poll only once half of such a limit is free again
        # (so a busy receiver's places are refilled two or more at a time); otherwise the loop
        # claims at its poll, what came due meanwhile in one claim, not one claim per POST.
        self._held: set[str] = set()
        self._full = False
        self._done = asyncio.Event()

    async def run(self) -> None:
        """Claim and send due deliveries until cancelled; then let the POSTs in flight end
        (for ``SHUTDOWN_GRACE_S`` at most) and close."""
        s = self.settings
        log.info("webhook_deliveries_started", concurrency=s.webhook_concurrency,
                 per_receiver=s.webhook_per_receiver)
        try:
            while True:
                self._done.clear()
                claimed, free = await self._claim_once()
                if time.monotonic() - self._measured_at >= BACKLOG_EVERY_S:
                    await self.measure_backlog()
                if claimed and claimed == free:
                    continue  # there may be more due right now
                # asyncio.timeout, not wait_for, which on Python 3.11 can drop the cancel
                # that stops this loop if it arrives as the event is set.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(s.webhook_poll_s):
                        await self._done.wait()
        finally:
            # POSTs still in flight after a short grace are dropped: their rows stay claimed
            # and are sent again once their lease runs out (at least once).
            if self.tasks:
                _, pending = await asyncio.wait(set(self.tasks), timeout=SHUTDOWN_GRACE_S)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.http.close()

    async def _claim_once(self) -> tuple[int, int]:
        """Claim what the free places allow and start sending; (claimed, places that were
        free)."""
        s = self.settings
        free = s.webhook_concurrency - len(self.tasks)
        if free <= 0:
            return 0, 0
        per = s.webhook_per_receiver
        busy = [r for r, n in self.in_flight.items() if n >= per]
        room = {r: per - n for r, n in self.in_flight.items() if 0 < n < per}
        try:
            rows = await self.pool.fetch(queries["claim_webhook_deliveries"], free, per, room,
                                         busy, s.webhook_timeout_s + LEASE_MARGIN_S)
        except Exception as exc:
            # PostgreSQL away, or anything else: the loop goes on and claims again later.
            log.warning("webhook_claim_failed", error=repr(exc))
            return 0, free
        try:
            outputs = await self._outputs(rows)
        except Exception as exc:
            # Claimed but not sent: sent once their lease runs out (at least once).
            log.warning("webhook_outputs_failed", error=repr(exc))
            return 0, free
        for row in rows:
            receiver = row["receiver"]
            self.in_flight[receiver] = self.in_flight.get(receiver, 0) + 1
            task = asyncio.create_task(self._deliver(row, outputs.get(row["job_id"], [])))
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, receiver=receiver))
        # Held back: the receivers skipped, and those that got as many as their free places
        # allowed (more may be due).
        took = collections.Counter(row["receiver"] for row in rows)
        self._held = {*busy, *(r for r, k in took.items() if k >= room.get(r, per))}
        self._full = self._full or len(self.tasks) >= s.webhook_concurrency
        return len(rows), free

    async def _outputs(self, rows: list[Any]) -> dict[uuid.UUID, list[Any]]:
        """The output rows of the claimed deliveries' succeeded jobs, by job (one query)."""
        succeeded = [row for row in rows if row["snapshot"]["status"] == "succeeded"]
        outputs: dict[uuid.UUID, list[Any]] = {}
        if succeeded:
            for asset in await self.pool.fetch(queries["list_job_assets"],
                                               list({row["user_id"] for row in succeeded}),
                                               list({row["job_id"] for row in succeeded})):
                outputs.setdefault(asset["job_id"], []).append(asset)
        return outputs

    async def measure_backlog(self) -> None:
        """Set the backlog gauges: deliveries due and not taken, and the oldest one's wait."""
        self._measured_at = time.monotonic()
        try:
            row = await self.pool.fetchrow(queries["webhook_backlog"])
        except Exception as exc:
            log.warning("webhook_backlog_failed", error=repr(exc))
            return
        assert row is not None
        self.metrics.webhooks_due.set(row["due"])
        self.metrics.webhook_oldest_due_age.set(row["oldest_due_s"])

    def _finished(self, task: asyncio.Task[None], *, receiver: str) -> None:
        self.tasks.discard(task)
        left = self.in_flight.get(receiver, 1) - 1
        if left > 0:
            self.in_flight[receiver] = left
        else:
            self.in_flight.pop(receiver, None)
        s = self.settings
        if receiver in self._held and left <= s.webhook_per_receiver // 2:
            self._held.discard(receiver)
            self._done.set()
        if self._full and len(self.tasks) <= s.webhook_concurrency // 2:
            self._full = False
            self._done.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_delivery_crashed", error=repr(task.exception()))

    async def _secrets(self, row: Any) -> list[str]:
        secrets_: list[str] = list(row["secrets"] or [])
        if not secrets_:
            # The user never asked for a secret: make the one GET /v1/webhooks/secret shows.
            made = await self.pool.fetchrow(queries["current_webhook_secret"], row["user_id"],
                                            new_secret())
            assert made is not None
            secrets_ = [made["secret"]]
        return secrets_

    async def body(self, row: Any, assets: list[Any]) -> str:
        """The delivery's JSON: ``{id, type, created_at, data}``, data the job as the event
        left it with its outputs (``assets``, read when it was claimed) and their fresh signed
        URLs, and ``output_index`` for an output."""
        job = Job.from_row(row["snapshot"], assets, await signed_urls(self.sign, assets))
        payload: dict[str, Any] = {
            "id": str(row["id"]), "type": row["event_type"],
            "created_at": row["created_at"].isoformat(), "data": job.model_dump(mode="json"),
        }
        if row["output_index"] is not None:
            payload["output_index"] = row["output_index"]
        return json.dumps(payload, separators=(",", ":"))

    async def _post(self, row: Any, body: str) -> int:
        """One signed POST to the checked address; the status code."""
        url = httpx.URL(row["url"])
        target = await resolve_checked(ascii_host(url), default_port(url),
                                       self.settings.webhook_allowed_hosts, what="webhook")
        pin(target)
        msg_id = str(row["id"])
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature(await self._secrets(row), msg_id, now, body),
        }
        # The URL as it was checked (an international name in its xn-- form), sent as it is;
        # no redirect is followed.
        async with self.http.post(URL(str(url), encoded=True), data=body.encode(),
                                  headers=headers, allow_redirects=False) as response:
            # Read a short answer to its end, so the connection is kept for the next POST;
            # a longer one is not kept (nor its connection).
            read = 0
            async for chunk in response.content.iter_any():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    response.close()
                    break
            return response.status

    async def _deliver(self, row: Any, assets: list[Any]) -> None:
        attempted_at = datetime.now(UTC)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        blocked = False
        try:
            body = await self.body(row, assets)
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                status = await self._post(row, body)
        except AddressBlocked as exc:
            error, blocked = exc.message, True
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except Exception:
            log.exception("webhook_delivery_error", delivery=str(row["id"]))
            error = "internal error"
        duration_ms = (time.monotonic() - started) * 1000
        await self._record(row, attempted_at, status, error, duration_ms, blocked=blocked)

    async def _record(self, row: Any, attempted_at: datetime, status: int | None,
                      error: str | None, duration_ms: float, *, blocked: bool = False) -> None:
        delay: float | None = None
        if status is not None and 200 <= status < 300:
            state, outcome = "delivered", DELIVERED
        elif status == 410:
            state, outcome = "gone", GONE
            error = "HTTP 410: the receiver is gone; nothing more is sent"
        else:
            if status is not None:
                error = f"HTTP {status}"
            delay = retry_delay(row["attempts"])
            state = "pending" if delay is not None else "failed"
            outcome = GIVEN_UP if delay is None else BLOCKED if blocked else RETRYING
        error = error[:MAX_ERROR_CHARS] if error is not None else None
        await self.finish(Finished(row["id"], attempted_at, state, delay or 0.0, status, error,
                                   duration_ms))
        lag_s = ((datetime.now(UTC) - row["created_at"]).total_seconds()
                 if outcome == DELIVERED else None)
        self.metrics.webhook_attempt(row["event_type"], outcome, duration_ms / 1000, lag_s)
        if state == "gone":
            await self.pool.execute(queries["disable_job_webhook"], row["job_id"])
        level = "debug" if state == "delivered" else "info"
        getattr(log, level)("webhook_attempt", delivery=str(row["id"]), job_id=str(row["job_id"]),
                            type=row["event_type"], attempt=row["attempts"], status=status,
                            state=state, error=error, duration_ms=round(duration_ms, 1))

    async def _finish_many(self, done: list[Finished]) -> list[None]:
        """One statement records the attempts that ended together."""
        await self.pool.execute(queries["finish_webhook_attempts"],
                                *(list(column) for column in zip(*done, strict=True)))
        return [None] * len(done)


async def run_deliveries(pool: Pool, settings: Settings, metrics: Metrics) -> None:
    """The delivery loop of one process, counting in ``metrics``, until cancelled."""
    await Deliverer(pool, settings, metrics).run()
