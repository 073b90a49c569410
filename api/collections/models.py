"""What ``/v1/collections`` takes and answers."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.fields import Page, ResponseModel, Time
from api.library.models import patch_schema
from api.validation import NO_NUL

_NAME = Field(min_length=1, max_length=100, pattern=NO_NUL)
_DESCRIPTION = Field(default=None, max_length=1000, pattern=NO_NUL)


class CollectionCreate(BaseModel):
    """``POST /v1/collections``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = _NAME
    description: str | None = _DESCRIPTION


class CollectionUpdate(BaseModel):
    """``PATCH /v1/collections/{collection_id}``: the fields given change."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=patch_schema)

    name: str = Field(default="-", min_length=1, max_length=100, pattern=NO_NUL)
    description: str | None = _DESCRIPTION

    @field_validator("name", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null")
        return value


class Collection(ResponseModel):
    """A collection of library items."""

    id: uuid.UUID
    name: str
    description: str | None
    asset_count: int = Field(description="Its library items that are not deleted.")
    created_at: Time
    updated_at: Time

    @classmethod
    def from_row(cls, row: Any) -> Collection:
        """A ``user_collections`` row."""
        return cls(id=row["id"], name=row["name"], description=row["description"],
                   asset_count=row["asset_count"], created_at=row["created_at"],
                   updated_at=row["updated_at"])


class CollectionPage(Page[Collection]):
    """A page of collections."""
