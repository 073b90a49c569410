"""Reading a JSON request body: media type, size cap, and a parser that refuses what Postgres
would choke on later (NaN, Infinity), so bad input is a 4xx and never a 500."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from api.errors import InvalidJson, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (``application/json``, any parameters)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes; :class:`InvalidJson` on anything else."""
    if not raw.strip():
        raise InvalidJson("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson("the request body is not UTF-8") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InvalidJson("the request body is nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, and ValueError for integers past Python's digit limit.
        raise InvalidJson(f"the request body is not valid JSON: {exc}") from exc


async def read_json(request: Request, max_bytes: int) -> Any:
    """The parsed JSON body, after checking its media type and size (streamed, capped)."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the request body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidJson("the client disconnected before sending the whole body") from exc
    return parse_json(b"".join(chunks))
