"""Field types and shapes the resources' response models share: times as the API writes them,
and a page of a list endpoint."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, WithJsonSchema


def _iso(value: datetime) -> str:
    return value.isoformat()


#: A time as the API writes it: ISO 8601 with its offset (``+00:00``).
Time = Annotated[
    datetime,
    PlainSerializer(_iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

T = TypeVar("T")


class ResponseModel(BaseModel):
    """Base of every response body: built by the server, never from client input."""

    model_config = ConfigDict(frozen=True)


class Page(ResponseModel, Generic[T]):
    """One page of a list, newest first; ``next_cursor`` is None on the last page."""

    data: list[T]
    next_cursor: str | None
