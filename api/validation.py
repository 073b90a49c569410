"""Checking request bodies: parsing into a resource's strict pydantic model, plus the limits that
depend on settings.

Everything a client can send is checked here, before any SQL runs, including what Postgres would
refuse later (NUL characters, lone surrogates, non-finite numbers), so bad input is a 422 and
never a 500.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from api.errors import ValidationFailed, echo
from shared.errors import NotFound
from shared.ledger import MAX_BALANCE

MAX_SEED = 2**63 - 1
MAX_PARAMS_DEPTH = 16
# No account holds more than MAX_BALANCE, so no single grant can be larger.
MAX_GRANT = MAX_BALANCE
MAX_IDEMPOTENCY_KEY_CHARS = 255

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from api.routing import Call

#: The JSON Schema ``pattern`` of free text PostgreSQL stores (a title, a tag, a name): no NUL
#: character, so a client reading /openapi.json knows that one is refused (422).
NO_NUL = r"^[^\x00]*$"


def _integral_float(value: Any) -> Any:
    """``3.0`` as ``3``: JSON Schema counts a number with a zero fraction as an integer, and
    the OpenAPI document says ``"type": "integer"``. Anything else is left for the strict
    integer check to refuse (``3.5``, ``true``, ``"3"``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Metadata of every integer field of a request body, after its bounds (so the bounds stay in
# the JSON Schema as minimum/maximum): a JSON integer, or a number with a zero fraction.
INTEGRAL = BeforeValidator(_integral_float)


def parse_id(raw: str) -> uuid.UUID | None:
    """A path id as a UUID, or None if it is not one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def path_uuid(call: Call, name: str, error: type[NotFound]) -> uuid.UUID:
    """The path parameter ``name`` as a UUID. A malformed one names nothing, so it is the same
    404 as an id that exists nowhere: ``error.of(id)``."""
    raw = call.path[name]
    value = parse_id(raw)
    if value is None:
        raise error.of(echo(raw))
    return value


def field_error(field: str, message: str) -> dict[str, str]:
    """One entry of a 422's ``details``."""
    return {"field": field, "message": message}


def parse_body(model: type[M], data: Any) -> M:
    """Validate a decoded JSON body against ``model``; :class:`ValidationFailed` with every
    problem in ``details`` otherwise."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            "the request body must be a JSON object", details=[field_error("", "not an object")]
        )
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        details = [
            field_error(".".join(str(p) for p in err["loc"]), err["msg"])
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed("invalid request body", details=details) from exc
    problems = [
        field_error(name, message)
        for name, value in parsed
        if isinstance(value, str) and (message := text_problem(value)) is not None
    ]
    if problems:
        raise ValidationFailed("invalid request body", details=problems)
    return parsed


def text_problem(value: str) -> str | None:
    """Why Postgres could not store ``value`` as text, or None if it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def params_problem(params: dict[str, Any], max_bytes: int) -> str | None:
    """Why ``params`` cannot be stored as a job's jsonb, or None if it can."""
    stack: list[tuple[Any, int]] = [(params, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PARAMS_DEPTH:
            return f"must not nest deeper than {MAX_PARAMS_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                if (problem := text_problem(key)) is not None:
                    return f"keys {problem}"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if (problem := text_problem(value)) is not None:
                return f"strings {problem}"
        elif isinstance(value, float) and not math.isfinite(value):
            return "numbers must be finite"
    size = len(canonical_json(params))
    if size > max_bytes:
        return f"must serialize to at most {max_bytes} bytes (got {size})"
    return None


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def request_hash(model: BaseModel, omit_unset: Collection[str] = ()) -> str:
    """What an Idempotency-Key is bound to: the canonical form of the validated body, without
    the fields of ``omit_unset`` that are None (fields added later: a body without them keeps
    the fingerprint it had before they existed)."""
    body = model.model_dump(mode="json")
    for name in omit_unset:
        if body.get(name) is None:
            body.pop(name, None)
    return hashlib.sha256(canonical_json(body)).hexdigest()


def idempotency_key(raw: str | None) -> str | None:
    """The ``Idempotency-Key`` header, checked: 1..255 printable ASCII characters."""
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY_CHARS or not (raw.isascii() and raw.isprintable()):
        raise ValidationFailed(
            "invalid Idempotency-Key header",
            details=[field_error("Idempotency-Key", "must be 1 to 255 printable ASCII characters")],
        )
    return raw
