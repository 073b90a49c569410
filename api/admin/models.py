"""What the admin endpoints take and answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from api.credits.models import LedgerEntry
from api.fields import ResponseModel
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
    """``POST /v1/admin/users/{id}/credits``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    amount: Annotated[int, Field(ge=1, le=MAX_GRANT), INTEGRAL]
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
