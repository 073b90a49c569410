"""What ``/v1/me`` answers."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from api.credits.models import Credits
from api.fields import ResponseModel, Time
from api.plans.models import Plan


class ExternalIdentity(ResponseModel):
    """An identity provider's account this user signs in with (by JWT)."""

    issuer: str = Field(description="The token's `iss` (GENQ_JWT_ISSUER).")
    subject: str = Field(description="The token's `sub`: the user's id at the provider.")
    email: str | None = Field(description="The token's `email` claim when the user was created.")
    created_at: Time


class StorageUse(ResponseModel):
    """The user's library storage: what their items take, and the quota it may not pass."""

    used_bytes: int = Field(description="Bytes of the user's library items that are not deleted.")
    quota_bytes: int = Field(
        description="The quota in force: the user's own (set by an admin), else their plan's "
                    "`storage_quota_bytes`, else the server's GENQ_LIBRARY_QUOTA_BYTES. A save or "
                    "restore past it is 403 `storage_quota_exceeded`.")
    quota_source: Literal["user", "plan", "server"] = Field(
        description="Where `quota_bytes` comes from.")


class Me(ResponseModel):
    """The calling user, however it authenticated (API key or JWT)."""

    id: uuid.UUID
    email: str | None = Field(
        description="null for a user created from a token without an email claim (or whose "
                    "email another user already has).")
    created_at: Time
    plan: Plan = Field(description="The user's plan (`free` unless an admin assigned one).")
    max_running: int | None = Field(
        description="Jobs of the user running at once: their own cap, else their plan's; null: "
                    "the server's GENQ_USER_MAX_RUNNING.")
    credits: Credits
    storage: StorageUse
    identities: list[ExternalIdentity] = Field(
        description="The identity provider accounts that sign in as this user; empty for a "
                    "user made by an admin.")
