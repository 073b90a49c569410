"""What ``/v1/credits`` answers."""

from __future__ import annotations

import uuid

from pydantic import Field

from api.assets.models import Row
from api.fields import Page, ResponseModel, Time
from shared.types import LedgerKind


class Credits(ResponseModel):
    """An account: the spendable balance and the total held by open reservations."""

    balance: int
    reserved: int


class LedgerEntry(ResponseModel):
    """A credit ledger entry."""

    id: int
    kind: LedgerKind
    amount: int = Field(description="Signed change to the spendable balance.")
    reserved_delta: int
    balance_after: int
    job_id: uuid.UUID | None
    reservation_id: uuid.UUID | None
    reason: str | None
    created_at: Time

    @classmethod
    def from_row(cls, row: Row) -> LedgerEntry:
        """A ``credit_ledger`` row."""
        return cls(
            id=row["id"], kind=row["kind"], amount=row["amount"],
            reserved_delta=row["reserved_delta"], balance_after=row["balance_after"],
            job_id=row["job_id"], reservation_id=row["reservation_id"], reason=row["reason"],
            created_at=row["created_at"],
        )


class LedgerPage(Page[LedgerEntry]):
    """A page of ledger entries."""
