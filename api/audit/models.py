"""What ``/v1/admin/audit`` answers, and the audit row an admin handler writes."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.assets.models import Row
from api.fields import Page, ResponseModel, Time
from api.routing import Call
from shared.audit import AuditEntry


class AuditRecord(ResponseModel):
    """One admin action."""

    id: int
    created_at: Time
    actor: str = Field(description="The admin's name (GENQ_ADMIN_TOKEN is `admin`; "
                                   "GENQ_ADMIN_TOKENS names the others).")
    action: str = Field(description="What was done, e.g. `credits.adjust`, `key.revoke`.")
    target_type: str | None = Field(description="`user`, `api_key`, `job`, `library_item`.")
    target_id: str | None
    request_id: str | None = Field(description="The request's X-Request-ID.")
    amount_before: int | None = Field(description="The balance before (credit actions).")
    amount_after: int | None = Field(description="The balance after (credit actions).")
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> AuditRecord:
        """An ``audit_log`` row."""
        return cls(id=row["id"], created_at=row["created_at"], actor=row["actor"],
                   action=row["action"], target_type=row["target_type"],
                   target_id=row["target_id"], request_id=row["request_id"],
                   amount_before=row["amount_before"], amount_after=row["amount_after"],
                   details=row["details"])


class AuditPage(Page[AuditRecord]):
    """A page of the audit log."""


def entry(call: Call, action: str, target_type: str | None = None, target_id: object = None,
          *, before: int | None = None, after: int | None = None,
          details: dict[str, Any] | None = None) -> AuditEntry:
    """The audit row of ``call``'s admin doing ``action``."""
    return AuditEntry(actor=call.admin, action=action, request_id=call.request_id,
                      target_type=target_type,
                      target_id=None if target_id is None else str(target_id),
                      amount_before=before, amount_after=after, details=details or {})
