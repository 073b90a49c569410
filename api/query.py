"""Query strings of the list endpoints, checked as a whole before any value is used.

Every list endpoint names the parameters it takes; a name it does not take, a name given twice
or a name with an empty value is a 422 ``validation_error`` naming each offending parameter, so
a typo or a filter the endpoint does not have is never silently ignored. Values are then read
through typed parsers that raise :class:`ValidationFailed` naming their parameter.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Collection
from typing import TypeVar

from starlette.requests import Request

from api.errors import ValidationFailed
from api.validation import parse_id

T = TypeVar("T")


def _problem(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


class QueryParams:
    """The checked query string of one request: only ``allowed`` names, each once, none empty."""

    def __init__(self, request: Request, allowed: Collection[str]) -> None:
        items = request.query_params.multi_items()
        values = dict(items)
        counts = Counter(name for name, _ in items)
        problems = []
        for name, count in counts.items():
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                problems.append(_problem(name, f"unknown query parameter (this endpoint takes: "
                                               f"{known})"))
            elif count > 1:
                problems.append(_problem(name, "must be given at most once"))
            elif not values[name]:
                problems.append(_problem(name, "must not be empty (leave it out instead)"))
        if problems:
            raise ValidationFailed("invalid query parameters", details=problems)
        self._values = values

    def get(self, name: str, parse: Callable[[str], T]) -> T | None:
        """The value of ``name`` through ``parse``, or None if it was not given."""
        raw = self._values.get(name)
        return None if raw is None else parse(raw)

    def raw(self, name: str) -> str | None:
        """The value of ``name`` as sent (non-empty), or None if it was not given."""
        return self._values.get(name)


def invalid(field: str, message: str) -> ValidationFailed:
    """The 422 for one bad query value."""
    return ValidationFailed(f"invalid {field}", details=[_problem(field, message)])


def one_of(field: str, choices: Collection[str]) -> Callable[[str], str]:
    """A parser that takes one of ``choices``."""

    def parse(raw: str) -> str:
        if raw not in choices:
            raise invalid(field, f"must be one of {', '.join(choices)}")
        return raw

    return parse


def a_uuid(field: str) -> Callable[[str], uuid.UUID]:
    """A parser that takes a UUID."""

    def parse(raw: str) -> uuid.UUID:
        value = parse_id(raw)
        if value is None:
            raise invalid(field, "must be a UUID")
        return value

    return parse
