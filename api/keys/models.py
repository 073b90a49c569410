"""What the key routes answer."""

from __future__ import annotations

import uuid

from pydantic import Field

from api.fields import Page, ResponseModel, Time
from shared.users import ApiKeyRow


class ApiKey(ResponseModel):
    """An API key, by its prefix (genq keeps only the key's hash)."""

    id: uuid.UUID
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: Time
    last_used_at: Time | None = Field(
        description="When it last authenticated a request (to within a minute or the key "
                    "cache's TTL); null: never.")
    revoked_at: Time | None = Field(description="null: the key works.")

    @classmethod
    def of(cls, key: ApiKeyRow) -> ApiKey:
        """The answer for a key."""
        return cls(id=key.id, prefix=key.prefix, created_at=key.created_at,
                   last_used_at=key.last_used_at, revoked_at=key.revoked_at)


class NewApiKey(ApiKey):
    """A key just made, with the key itself: shown only in this response."""

    api_key: str = Field(description="Shown only in this response.")


class ApiKeyPage(Page[ApiKey]):
    """A page of keys, newest first."""
