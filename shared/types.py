"""The words genq's tables are made of, one definition each.

Every value set here is also a CHECK constraint in the database (sql/migrations/0001_schema.sql):
``generation_jobs.status``, ``workspace_assets.asset_type`` and ``models.media_type``,
``credit_ledger.kind``, ``credit_reservations.status`` (and ``job_events.type``, in
0024_job_events.sql). tests/integration/test_types.py reads the
constraints of a freshly migrated database and fails unless both sides list the same values, so
a value added on one side only is caught by the tests.

The members are ``str`` (``enum.StrEnum``): they compare equal to the text PostgreSQL returns,
go into queries as text and serialize to JSON as their value.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Where a generation job stands. Every accepted job ends in exactly one terminal status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True for a status a job never leaves."""
        return self in TERMINAL_STATUSES


# The statuses a job never leaves (``generation_jobs_terminal_has_finished_at``: exactly these
# have a ``finished_at``).
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
)
# The statuses of a job not finished yet: waiting for a worker, or held by one.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - TERMINAL_STATUSES


class AssetType(enum.StrEnum):
    """What a model makes and a workspace asset holds (``models.media_type``,
    ``workspace_assets.asset_type``)."""

    IMAGE = "image"
    VIDEO = "video"


class LedgerKind(enum.StrEnum):
    """The kind of a credit ledger entry."""

    GRANT = "grant"
    RESERVE = "reserve"
    CAPTURE = "capture"
    REFUND = "refund"
    #: An admin's correction of the spendable balance, either sign (sql/migrations/0026).
    ADJUST = "adjust"


class ReservationStatus(enum.StrEnum):
    """Where a credit reservation stands; it is settled (captured or refunded) exactly once."""

    OPEN = "open"
    CAPTURED = "captured"
    REFUNDED = "refunded"


class JobEventType(enum.StrEnum):
    """A change of a job a live client is told of (``job_events.type``): queued, started, one
    more output made, or the terminal status it reached."""

    QUEUED = "job.queued"
    STARTED = "job.started"
    OUTPUT = "job.output"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


# The events after which a job never changes again: its terminal statuses.
TERMINAL_EVENTS: frozenset[JobEventType] = frozenset(
    JobEventType(f"job.{status}") for status in TERMINAL_STATUSES
)
