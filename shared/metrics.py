"""Prometheus metrics: every series genq exports, defined once.

Each process (an API, a worker, a scheduler) builds one :class:`Metrics` on a registry of its
own and serves it: the API at ``GET /metrics`` (admin token), ``genq worker`` and ``genq
scheduler`` on ``GENQ_METRICS_PORT``. Nothing is shared between processes, so any number of
them run side by side; Prometheus scrapes each one and sums across them
(``sum by (model, status) (rate(genq_jobs_finished_total[5m]))``). Labels are bounded: models,
statuses, providers, outcomes, route templates, maintenance tasks, webhook event types; never a
user, job or key id, nor a webhook's URL or host.
Recording is a counter increment or a histogram observation, nothing more.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

#: The Content-Type of the text exposition format.
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a few milliseconds (a local job, an HTTP answer) to the slowest model's timeout.
_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                 1800, 3600)
_RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A webhook POST: a local receiver's millisecond to GENQ_WEBHOOK_TIMEOUT_S (10 s; at most 300).
_WEBHOOK_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The series of one process, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_submitted = Counter(
            "genq_jobs_submitted", "Jobs accepted at the intake (replays not counted).",
            ["model"], registry=r)
        self.jobs_finished = Counter(
            "genq_jobs_finished", "Jobs that reached a terminal status, by the model asked "
            "for.", ["model", "status"], registry=r)
        self.queue_wait = Histogram(
            "genq_job_queue_wait_seconds", "From submit to the first claim by a worker.",
            ["model"], buckets=_WAIT_BUCKETS, registry=r)
        self.run_time = Histogram(
            "genq_job_run_seconds", "From a worker's claim to the job's final write, per "
            "attempt that finished the job.", ["model", "status"], buckets=_RUN_BUCKETS,
            registry=r)
        self.provider_requests = Counter(
            "genq_provider_requests", "Calls to a provider for a job (each with its own "
            "retries), by outcome.", ["provider", "outcome"], registry=r)
        self.provider_latency = Histogram(
            "genq_provider_request_seconds", "How long a provider took to answer a job, "
            "retries included.", ["provider", "outcome"], buckets=_RUN_BUCKETS, registry=r)
        self.credits_reserved = Counter(
            "genq_credits_reserved", "Credits held at submit.", registry=r)
        self.credits_captured = Counter(
            "genq_credits_captured", "Credits spent by finished jobs.", registry=r)
        self.credits_refunded = Counter(
            "genq_credits_refunded", "Credits of holds given back (failures, cancels, unused "
            "outputs, stale holds).", registry=r)
        self.credits_job_refunds = Counter(
            "genq_credits_job_refunds", "Captured credits an admin gave back for a finished "
            "job.", registry=r)
        self.http_requests = Counter(
            "genq_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=r)
        self.http_latency = Histogram(
            "genq_http_request_seconds", "Time to answer an HTTP request, by route template.",
            ["method", "route"], buckets=_HTTP_BUCKETS, registry=r)
        self.jobs_queued = Gauge(
            "genq_jobs_queued", "Jobs queued and not yet claimed (read when scraped).",
            registry=r)
        self.oldest_queued_age = Gauge(
            "genq_queue_oldest_age_seconds", "Age of the oldest queued job; 0 when none "
            "(read when scraped).", registry=r)
        self.maintenance_items = Counter(
            "genq_maintenance_items", "What the scheduler's tasks did, by task and what.",
            ["task", "what"], registry=r)
        self.maintenance_runs = Counter(
            "genq_maintenance_runs", "Runs of each scheduler task.", ["task"], registry=r)
        self.webhook_attempts = Counter(
            "genq_webhook_attempts", "Webhook delivery attempts, by event type and outcome: "
            "delivered (2xx), retrying (an error answer or none; tried again), blocked (the "
            "address was refused; tried again), gone (410), given_up (the last attempt "
            "failed).", ["event", "outcome"], registry=r)
        self.webhook_attempt_time = Histogram(
            "genq_webhook_attempt_seconds", "How long a webhook POST took, by outcome.",
            ["outcome"], buckets=_WEBHOOK_BUCKETS, registry=r)
        self.webhook_delivery_lag = Histogram(
            "genq_webhook_delivery_lag_seconds", "From an event to its delivery (the 2xx "
            "answer), retries included.", ["event"], buckets=_WAIT_BUCKETS, registry=r)
        self.webhooks_due = Gauge(
            "genq_webhook_deliveries_due", "Webhook deliveries due and not yet taken "
            "(measured by the delivery loop every few seconds).", registry=r)
        self.webhook_oldest_due_age = Gauge(
            "genq_webhook_oldest_due_age_seconds", "How long the longest-waiting due webhook "
            "delivery has been due; 0 when none (measured with the count).", registry=r)

    def exposition(self) -> bytes:
        """The text format, as ``/metrics`` answers."""
        return generate_latest(self.registry)

    def job_finished(self, model: str, status: str, refunded: int = 0) -> None:
        """A job ended away from a worker (a cancel, a disable), ``refunded`` given back."""
        self.jobs_finished.labels(model, status).inc()
        if refunded:
            self.credits_refunded.inc(refunded)

    def settled(self, captured: int, refunded: int) -> None:
        """A hold settled."""
        if captured:
            self.credits_captured.inc(captured)
        if refunded:
            self.credits_refunded.inc(refunded)

    def webhook_attempt(self, event: str, outcome: str, duration_s: float,
                        lag_s: float | None = None) -> None:
        """A webhook POST ended; ``lag_s``: the event's age when it was delivered."""
        self.webhook_attempts.labels(event, outcome).inc()
        self.webhook_attempt_time.labels(outcome).observe(duration_s)
        if lag_s is not None:
            self.webhook_delivery_lag.labels(event).observe(max(lag_s, 0.0))


def serve_metrics(metrics: Metrics, settings: Settings, process: str) -> MetricsServer | None:
    """Serve ``metrics`` on GENQ_METRICS_HOST:GENQ_METRICS_PORT when the port is set."""
    if settings.metrics_port is None:
        return None
    server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port)
    log.info("metrics_serving", process=process, host=settings.metrics_host, port=server.port)
    return server


class MetricsServer:
    """``/metrics`` on its own port, in a thread (prometheus-client's server), for the
    processes that serve no HTTP of their own."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
