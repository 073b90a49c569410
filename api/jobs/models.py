"""What ``/v1/jobs`` takes and answers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.assets.models import Asset, Row
from api.errors import ValidationFailed
from api.fields import Page, ResponseModel, Time
from api.validation import INTEGRAL, MAX_SEED, field_error, params_problem
from shared.types import JobStatus
from shared.webhooks import DEFAULT_EVENTS, MAX_URL_CHARS, url_problem

WebhookEvent = Literal["started", "output", "completed"]


class JobCreate(BaseModel):
    """``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = Field(min_length=1, max_length=200, description="A model key from /v1/models.")
    prompt: str = Field(min_length=1, description="What to generate.")
    num_outputs: Annotated[int, Field(ge=1, le=100), INTEGRAL] = Field(
        default=1, description="Up to the model's max."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Provider parameters, merged over the model's defaults; the result must "
                    "match the model's params_schema (see /v1/models) and sets its price.",
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), INTEGRAL] | None = None
    webhook_url: str | None = Field(
        default=None, min_length=1, max_length=MAX_URL_CHARS,
        description="Called (POST, signed per Standard Webhooks with the secret of "
                    "GET /v1/webhooks/secret) on the job's `webhook_events`. http or https, no "
                    "credentials; a private, loopback or link-local address, or a name resolving "
                    "to one, is refused unless its host is allowed by the operator.")
    webhook_events: list[WebhookEvent] | None = Field(
        default=None, min_length=1, max_length=3,
        description="Which events call `webhook_url`: `started`, `output` (one per output), "
                    "`completed` (succeeded, failed or canceled). Default: `[\"completed\"]`.")

    @property
    def webhook(self) -> tuple[str, list[str]] | None:
        """The job's webhook URL and events (the default ones if none were sent), or None."""
        if self.webhook_url is None:
            return None
        return self.webhook_url, list(self.webhook_events or DEFAULT_EVENTS)


#: Fields left out of the Idempotency-Key's fingerprint while unset, so that a body sent
#: before they existed keeps its fingerprint.
LATER_FIELDS = ("webhook_url", "webhook_events")


def check_job(job: JobCreate, *, max_prompt_chars: int, max_params_bytes: int) -> None:
    """The limits that come from settings; :class:`ValidationFailed` listing every problem."""
    problems = []
    if not job.prompt.strip():
        problems.append(field_error("prompt", "must not be blank"))
    elif len(job.prompt) > max_prompt_chars:
        problems.append(field_error("prompt", f"must be at most {max_prompt_chars} characters"))
    if (problem := params_problem(job.params, max_params_bytes)) is not None:
        problems.append(field_error("params", problem))
    if job.webhook_url is not None and (problem := url_problem(job.webhook_url)) is not None:
        problems.append(field_error("webhook_url", problem))
    if job.webhook_events is not None:
        if job.webhook_url is None:
            problems.append(field_error("webhook_events", "needs a webhook_url"))
        elif len(set(job.webhook_events)) != len(job.webhook_events):
            problems.append(field_error("webhook_events", "must not repeat an event"))
    if problems:
        raise ValidationFailed("invalid request body", details=problems)


class Cost(ResponseModel):
    """What a job costs: the price of one output, what was reserved, and of that what was
    captured and refunded."""

    price_per_output: int
    reserved: int
    captured: int
    refunded: int


class JobError(ResponseModel):
    """Why a job failed."""

    code: str
    message: str


class ProviderState(ResponseModel):
    """Where the job stands at its provider."""

    queue_position: int | None = Field(
        description="While the job waits in the provider's own queue (fal): its place there, "
                    "0 first; null otherwise.")


class QueuePlace(ResponseModel):
    """Where a queued job stands in genq's queue."""

    position: int = Field(
        description="Jobs submitted before this one, counted from the oldest job still queued "
                    "(0: the next to start in submission order). An estimate: fair sharing "
                    "and priority tiers can start a job before older ones.")
    eta_s: int | None = Field(
        description="Estimated seconds until the job starts, from how fast the queue has been "
                    "moving; null until that is known.")


class Job(ResponseModel):
    """A generation job with its cost and unexpired outputs.

    Its columns come from one place, the ``job_responses`` view (0017), read by ``get_job`` and
    ``list_jobs``; :meth:`from_row` reads each of them.
    """

    id: uuid.UUID
    status: JobStatus
    model: str
    ran_model: str = Field(
        description="The model that runs (or ran) the job: `model`, or the model's fallback "
                    "once the job moved to it because the model's provider stayed unavailable.")
    prompt: str
    num_outputs: int
    params: dict[str, Any]
    seed: int | None
    cost: Cost
    outputs: list[Asset]
    error: JobError | None
    cancel_requested: bool
    provider: ProviderState
    outputs_staged: int = Field(
        description="Outputs the running attempt has made so far, of num_outputs (job.output "
                    "events count them).")
    queue: QueuePlace | None = Field(description="While the job is queued: its place in the "
                                                 "queue; null otherwise.")
    webhook_url: str | None = Field(description="The job's webhook, null if none.")
    webhook_events: list[WebhookEvent] | None = Field(
        description="The events that call `webhook_url`, null without a webhook.")
    created_at: Time
    enqueued_at: Time | None
    started_at: Time | None
    finished_at: Time | None

    @classmethod
    def from_row(cls, row: Row, outputs: Sequence[Row] = (),
                 urls: Mapping[str, str] | None = None) -> Job:
        """A ``job_responses`` row and its output rows (``urls``: each output's signed
        ``content_url`` by storage key)."""
        urls = urls or {}
        code, message = row["error_code"], row["error_message"]
        error = None if code is None else JobError(code=code, message=message or "")
        return cls(
            id=row["id"], status=row["status"], model=row["model"],
            ran_model=row["ran_model"] or row["model"], prompt=row["prompt"],
            num_outputs=row["num_outputs"], params=row["params"], seed=row["seed"],
            cost=Cost(
                price_per_output=row["price_per_output"],
                reserved=row["reserved"] or 0,  # a free model: nothing was reserved
                captured=row["captured"] or 0,
                refunded=row["refunded"] or 0,
            ),
            outputs=[Asset.from_row(a, urls) for a in outputs],
            error=error,
            cancel_requested=row["cancel_requested_at"] is not None,
            provider=ProviderState(queue_position=_while_running(
                row["status"], row["provider_queue_position"])),
            outputs_staged=row["outputs_staged"],
            queue=_queue_place(row["queue_position"], row["queue_eta_s"]),
            webhook_url=row["webhook_url"], webhook_events=row["webhook_events"],
            created_at=row["created_at"], enqueued_at=row["enqueued_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
        )


def _while_running(status: str, queue_position: int | None) -> int | None:
    """The provider's queue position matters only while the job runs (a stale one is hidden)."""
    return queue_position if status == JobStatus.RUNNING else None


def _queue_place(position: int | None, eta_s: int | None) -> QueuePlace | None:
    """The queue place of a queued job (the view gives a position only to queued jobs)."""
    return None if position is None else QueuePlace(position=position, eta_s=eta_s)


class JobPage(Page[Job]):
    """A page of jobs."""
