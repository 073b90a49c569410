"""What the admin endpoints take and answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.credits.models import Credits, LedgerEntry
from api.fields import Page, ResponseModel, Time
from api.keys.models import ApiKey
from api.me.models import Me
from api.validation import INTEGRAL, MAX_GRANT

# One side of an email address: no "@", no control character (NUL included) and no white space,
# each listed by code point so that this server and any JSON Schema (ECMA-262) validator refuse
# exactly the same characters (their "\s" differ on U+0085 and U+FEFF).
_EMAIL_PART = (
    r"[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)


class UserCreate(BaseModel):
    """``POST /v1/admin/users``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    email: str = Field(
        min_length=3, max_length=320, pattern=f"^{_EMAIL_PART}@{_EMAIL_PART}$"
    )


class CreditGrant(BaseModel):
    """``POST /v1/admin/users/{id}/credits``: a positive amount is a grant; a negative one
    takes credits back (ledger kind ``adjust``), never below a zero balance."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    amount: Annotated[int, Field(ge=-MAX_GRANT, le=MAX_GRANT, json_schema_extra={"not": {
        "const": 0}}), INTEGRAL]
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0 (positive grants, negative takes back)")
        return value


class JobRefund(BaseModel):
    """``POST /v1/admin/jobs/{id}/refund``: why (shown in the user's ledger)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reason: str | None = Field(default=None, max_length=500)


class NewUser(ResponseModel):
    """A user just created, with its API key."""

    id: uuid.UUID
    email: str
    api_key: str = Field(description="Shown only in this response.")


class GrantResult(ResponseModel):
    """The balance after a grant, and the grant's ledger entry."""

    balance: int
    entry: LedgerEntry


class JobRefunded(ResponseModel):
    """A finished job's captured credits given back (once; a replay answers the same entry)."""

    job_id: uuid.UUID
    refunded: int
    balance: int
    entry: LedgerEntry


class UserSummary(ResponseModel):
    """A user as an admin's search lists them."""

    id: uuid.UUID
    email: str | None
    created_at: Time
    disabled_at: Time | None
    plan: str
    credits: Credits


class UserPage(Page[UserSummary]):
    """A page of users, newest first."""


class Usage(ResponseModel):
    """What a user has used."""

    jobs: dict[str, int] = Field(description="Jobs by status (statuses with none left out).")
    credits_spent: int = Field(description="Credits captured by the user's jobs, in all.")
    library_bytes: int = Field(
        description="Bytes of the user's library items that are not deleted: their "
                    "``storage.used_bytes``.")


class AdminUser(Me):
    """A user as an admin sees them: what ``GET /v1/me`` shows, whether they are disabled,
    their usage and their keys (by prefix)."""

    disabled_at: Time | None = Field(description="null: the user may sign in.")
    usage: Usage
    keys: list[ApiKey] = Field(description="Every key, newest first, revoked ones too.")


class UserDisabled(ResponseModel):
    """A user after a disable (or an enable)."""

    user: AdminUser
    canceled_jobs: list[uuid.UUID] = Field(
        description="Queued jobs this disable canceled and refunded (running ones finish).")
    refunded: int = Field(description="Credits those jobs' holds gave back.")
