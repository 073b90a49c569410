"""What ``/v1/assets`` answers: an asset as clients see it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import Field

from api.fields import Page, ResponseModel, Time
from shared.types import AssetType


class Row(Protocol):
    """An asyncpg Record or a plain dict with the same keys."""

    def __getitem__(self, key: str, /) -> Any: ...


class AssetVariant(ResponseModel):
    """A smaller copy of an asset."""

    url: str
    width: int
    height: int
    mime_type: str


class Asset(ResponseModel):
    """A workspace asset: one output of a job."""

    id: uuid.UUID
    job_id: uuid.UUID
    index: int
    type: AssetType
    mime_type: str
    size_bytes: int
    width: int | None
    height: int | None
    duration_seconds: float | None
    fps: float | None
    seed: int | None
    model: str | None
    content_url: str = Field(
        description="A signed URL that serves the bytes without an Authorization header until "
                    "it expires (GENQ_URL_TTL_S): the store's presigned GET (S3), or "
                    "/v1/files/{key}?exp=&sig= on this API (local folder).")
    variants: dict[str, AssetVariant] = Field(
        description="Smaller copies made by the worker: `thumb` (at most 256 px, WebP) and "
                    "`web` (at most 1024 px, WebP, only for images larger than that) for "
                    "images; `poster` (the first frame, WebP) for videos. A variant that could "
                    "not be made is absent.")
    created_at: Time
    expires_at: Time | None

    @classmethod
    def from_row(cls, row: Row, urls: Mapping[str, str]) -> Asset:
        """An asset row; ``urls`` holds the signed URL (loads without a header) of its storage
        key and of its variants' keys."""
        return cls(
            id=row["id"], job_id=row["job_id"], index=row["asset_index"],
            type=row["asset_type"], mime_type=row["mime_type"],
            size_bytes=row["file_size_bytes"], width=row["width"], height=row["height"],
            duration_seconds=row["duration_seconds"], fps=row["fps"],
            seed=row["generation_seed"], model=row["model_used"],
            content_url=urls[row["storage_key"]],
            variants={
                kind: AssetVariant(url=urls[v["storage_key"]], width=v["width"],
                                   height=v["height"], mime_type=v["mime_type"])
                for kind, v in sorted((row["variants"] or {}).items())
            },
            created_at=row["created_at"], expires_at=row["expires_at"],
        )


class AssetPage(Page[Asset]):
    """A page of assets."""
