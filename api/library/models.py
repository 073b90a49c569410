"""What ``/v1/library`` takes and answers: a saved item as its owner sees it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from api.assets.models import AssetVariant, Row
from api.fields import Page, ResponseModel, Time
from api.validation import NO_NUL
from shared.types import AssetType

Visibility = Literal["private", "unlisted", "public"]
#: A tag: 1 to 50 characters, stored lower-case.
Tag = Annotated[str, Field(min_length=1, max_length=50, pattern=NO_NUL)]
MAX_TAGS = 20


def _uuid_text(value: object) -> object:
    # Strict mode takes a UUID only as a uuid.UUID; JSON sends text.
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError as exc:
            raise ValueError("must be a UUID") from exc
    return value


def _lowered(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(t.lower() for t in tags))


#: An id in a body: JSON text, a UUID (or null, where null is allowed).
BodyId = Annotated[uuid.UUID, BeforeValidator(_uuid_text)]
BodyIdOrNull = Annotated[uuid.UUID | None, BeforeValidator(_uuid_text)]
#: An item's tags: at most MAX_TAGS, then stored lower-case, each once.
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_lowered)]


class LibrarySave(BaseModel):
    """``POST /v1/library``: save a workspace asset for good."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    asset_id: BodyId
    title: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    tags: Tags = Field(default_factory=list)
    collection_id: BodyIdOrNull = None
    is_favorite: bool = False
    visibility: Visibility = "private"


def patch_schema(schema: dict[str, Any]) -> None:
    """A PATCH body's schema: a field left out stays as it is, so no field has a default."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class LibraryUpdate(BaseModel):
    """``PATCH /v1/library/{item_id}``: the fields given change; ``collection_id: null`` takes
    the item out of its collection, ``title: null`` clears its title."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=patch_schema)

    title: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    tags: Tags = Field(default_factory=list)
    is_favorite: bool = False
    visibility: Visibility = "private"
    collection_id: BodyIdOrNull = None

    @field_validator("is_favorite", "visibility", "tags", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null")
        return value


class LibraryAsset(ResponseModel):
    """The saved bytes: what they are."""

    type: AssetType
    mime_type: str
    size_bytes: int
    width: int | None
    height: int | None
    duration_seconds: float | None


class LibraryItem(ResponseModel):
    """A saved item, as its owner sees it."""

    id: uuid.UUID
    short_id: str = Field(description="The id of its share link, GET /v1/shared/{short_id}.")
    asset: LibraryAsset
    prompt: str | None
    model: str | None
    seed: int | None
    job_id: uuid.UUID | None
    title: str | None
    tags: list[str]
    is_favorite: bool
    visibility: Visibility
    collection_id: uuid.UUID | None
    content_url: str = Field(
        description="A signed URL that serves the bytes without an Authorization header until "
                    "it expires (GENQ_URL_TTL_S).")
    variants: dict[str, AssetVariant]
    taken_down: bool
    created_at: Time
    updated_at: Time
    deleted_at: Time | None

    @classmethod
    def from_row(cls, row: Row, urls: Mapping[str, str]) -> LibraryItem:
        """A ``user_library`` row with its ``variants``; ``urls`` the signed URL of each key."""
        variants: dict[str, Any] = row["variants"] or {}
        return cls(
            id=row["id"], short_id=row["short_id"],
            asset=LibraryAsset(
                type=row["asset_type"], mime_type=row["mime_type"],
                size_bytes=row["file_size_bytes"], width=row["width"], height=row["height"],
                duration_seconds=row["duration_seconds"],
            ),
            prompt=row["prompt"], model=row["model"], seed=row["seed"], job_id=row["job_id"],
            title=row["title"], tags=list(row["tags"]), is_favorite=row["is_favorite"],
            visibility=row["visibility"], collection_id=row["collection_id"],
            content_url=urls[row["storage_key"]],
            variants={
                kind: AssetVariant(url=urls[v["storage_key"]], width=v["width"],
                                   height=v["height"], mime_type=v["mime_type"])
                for kind, v in sorted(variants.items())
            },
            taken_down=row["taken_down_at"] is not None,
            created_at=row["created_at"], updated_at=row["updated_at"],
            deleted_at=row["deleted_at"],
        )


class LibraryPage(Page[LibraryItem]):
    """A page of library items."""


class SharedItem(ResponseModel):
    """A public or unlisted item as anyone sees it: no owner, no ids but its share id."""

    short_id: str
    asset: LibraryAsset
    prompt: str | None
    model: str | None
    title: str | None
    tags: list[str]
    content_url: str = Field(
        description="/v1/shared/{short_id}/content: the bytes, without credentials.")
    variants: dict[str, AssetVariant]
    published_at: Time | None = Field(
        description="When it became public (null for an unlisted item never public).")

    @classmethod
    def from_row(cls, row: Row, urls: Mapping[str, str]) -> SharedItem:
        """A ``feed`` or ``get_shared`` row; ``urls`` the signed URL of each variant key."""
        variants: dict[str, Any] = row["variants"] or {}
        return cls(
            short_id=row["short_id"],
            asset=LibraryAsset(
                type=row["asset_type"], mime_type=row["mime_type"],
                size_bytes=row["file_size_bytes"], width=row["width"], height=row["height"],
                duration_seconds=row["duration_seconds"],
            ),
            prompt=row["prompt"], model=row["model"], title=row["title"],
            tags=list(row["tags"]),
            content_url=f"/v1/shared/{row['short_id']}/content",
            variants={
                kind: AssetVariant(url=urls[v["storage_key"]], width=v["width"],
                                   height=v["height"], mime_type=v["mime_type"])
                for kind, v in sorted(variants.items())
            },
            published_at=row["published_at"],
        )


class FeedPage(Page[SharedItem]):
    """A page of the public feed."""


class Takedown(BaseModel):
    """``POST /v1/admin/library/{item_id}/takedown``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reason: str = Field(min_length=1, max_length=1000, pattern=NO_NUL)
