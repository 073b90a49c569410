"""What ``/v1/webhooks/secret`` and ``/v1/jobs/{id}/webhooks`` answer."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from api.assets.models import Row
from api.fields import ResponseModel, Time


class WebhookSecret(ResponseModel):
    """The caller's signing secret."""

    secret: str = Field(description="`whsec_` and the base64 key: give it to a Standard "
                                     "Webhooks verifier (e.g. `standardwebhooks.Webhook`).")
    created_at: Time
    previous_expires_at: Time | None = Field(
        description="After a rotation: until when the previous secret still signs every "
                    "delivery beside this one (null: no previous secret signs).")


class WebhookAttempt(ResponseModel):
    """One POST of a delivery."""

    attempted_at: Time
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(description="Why it did not count as delivered; null if it did.")
    duration_ms: float


class WebhookDelivery(ResponseModel):
    """One event of the job for its webhook, and every attempt to deliver it."""

    id: uuid.UUID = Field(description="The `webhook-id` of every attempt (and the body's `id`).")
    type: Literal["job.started", "job.output", "job.completed"]
    output_index: int | None = Field(description="For `job.output`: which output.")
    state: Literal["pending", "delivered", "gone", "failed", "canceled"] = Field(
        description="pending: tried again at `next_attempt_at`; delivered: a 2xx answer; gone: "
                    "the receiver answered 410, nothing more is sent for this job; failed: out "
                    "of attempts; canceled: an earlier delivery of the job was answered 410.")
    created_at: Time
    next_attempt_at: Time | None = Field(description="When it is tried next, while pending.")
    finished_at: Time | None
    attempts: list[WebhookAttempt]

    @classmethod
    def from_row(cls, row: Row) -> WebhookDelivery:
        """A ``list_job_webhook_deliveries`` row."""
        return cls(
            id=row["id"], type=row["event_type"], output_index=row["output_index"],
            state=row["state"], created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"], finished_at=row["finished_at"],
            attempts=[WebhookAttempt.model_validate(a) for a in row["tries"]],
        )


class WebhookDeliveries(ResponseModel):
    """A job's webhook deliveries, oldest first (none if the job has no webhook)."""

    data: list[WebhookDelivery]
