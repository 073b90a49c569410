"""Pieces of the OpenAPI description that several endpoints share: path ids, the page
parameters, the Idempotency-Key header, the answers of the routes that serve stored bytes.
An :class:`api.routing.Endpoint` uses them; :mod:`api.openapi` writes the document."""

from __future__ import annotations

from typing import Any

from api.routing import Reply


def path_id(name: str) -> dict[str, Any]:
    """A ``{name}`` path parameter that is a UUID."""
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid"}}


PAGE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 20},
     "description": "Page size (ASCII digits); values above 100 are treated as 100."},
    {"name": "cursor", "in": "query", "schema": {"type": "string", "minLength": 1},
     "description": "The next_cursor of the previous page (opaque)."},
]
# Said on every list operation: its query string is checked as a whole.
QUERY_RULES = ("Takes only the query parameters listed, each at most once and none empty; "
               "anything else is 422 validation_error naming the parameter.")
BAD_QUERY = ("validation_error: an unknown, repeated or empty query parameter, or a bad value")
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key", "in": "header",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    "description": "1 to 255 printable ASCII characters.",
}
REPLAYED: dict[str, Any] = {
    "description": "`true` when this answers a replay of an earlier request with the same "
                   "Idempotency-Key (the original result, nothing done again).",
    "schema": {"const": "true"},
}

CONTENT_SEMANTICS = (
    "GET or HEAD. One byte range (Range: bytes=a-b, a- or -n) answers 206 with Content-Range, "
    "a range past the end 416; If-None-Match with the ETag answers 304; the body streams "
    "with ETag, Last-Modified, Content-Disposition: inline, X-Content-Type-Options: nosniff "
    "and Cache-Control: private."
)
CONTENT_HEADERS: list[dict[str, Any]] = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in ("Range", "If-None-Match", "If-Range")
]
_BINARY = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
CONTENT_REPLIES: dict[int, Reply] = {
    200: Reply("The file, with its MIME type", content=_BINARY),
    206: Reply("The requested byte range", content=_BINARY),
    304: Reply("Not modified (the ETag matches If-None-Match)", content={}),
}
CONTENT_ERRORS = {416: "range_not_satisfiable: the range starts past the end"}
