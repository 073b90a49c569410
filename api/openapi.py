"""The OpenAPI 3.1 document of the API, generated from the route table and served at
``/openapi.json``.

Each :class:`api.routing.Endpoint` gives its path, method, summary, parameters, request body
model and answers; the schemas are the pydantic models' JSON Schemas (OpenAPI 3.1 is JSON
Schema 2020-12), gathered under ``components/schemas``. The error answers every endpoint of a
kind can give (credentials, backing services, a JSON body) are added here, from its ``auth`` and
``body``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.responses import JSONResponse, Response

from api.errors import Error
from api.routing import Call, Endpoint, Reply

_REF = "#/components/schemas/{model}"

_RETRY_AFTER = {"description": "Seconds to wait before trying again.",
                "schema": {"type": "string"}}
_WWW_AUTHENTICATE = {"description": "`Bearer`", "schema": {"type": "string"}}

# The errors every endpoint of a kind can answer, by status.
_AUTH_ERRORS: dict[str, dict[int, str]] = {
    "user": {401: "unauthorized: missing or invalid credentials; invalid_token: a user JWT "
                  "that does not verify (details.reason says why)",
             403: "account_disabled: an admin disabled this user"},
    "admin": {401: "unauthorized: missing or wrong admin token; invalid_token: a user JWT "
                   "(admin endpoints never accept one)",
              403: "Admin endpoints disabled (no GENQ_ADMIN_TOKEN)"},
    "none": {},
}
_SERVICE_ERROR = "Postgres or Redis unavailable"
# Every endpoint that reads a JSON body can answer these.
_BODY_ERRORS = {400: "invalid_json: malformed or empty JSON",
                413: "payload_too_large: the body is larger than GENQ_MAX_BODY_BYTES",
                415: "unsupported_media_type: not sent as application/json",
                422: "validation_error: details name each failing field"}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json(_ref(Error))}
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE}
    elif status == 429:
        answer["headers"] = {"Retry-After": {
            "description": "Seconds until the next submission is admitted.",
            "schema": {"type": "string"}}}
    return answer


def _reply(reply: Reply) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        answer["headers"] = {name: dict(header) for name, header in reply.headers.items()}
    if reply.model is not None:
        answer["content"] = _json(_ref(reply.model))
    elif reply.content:
        answer["content"] = dict(reply.content)
    if reply.links:
        answer["links"] = {name: dict(link) for name, link in reply.links.items()}
    return answer


def openapi_path(path: str) -> str:
    """A Starlette path as OpenAPI writes it: ``{key:path}`` is ``{key}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": endpoint.summary,
                                 "operationId": endpoint.operation_id}
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.auth == "none":
        operation["security"] = []
    if endpoint.parameters:
        operation["parameters"] = [dict(p) for p in endpoint.parameters]
    if endpoint.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(_ref(endpoint.body))}
    responses = {str(status): _reply(reply) for status, reply in endpoint.replies.items()}
    errors: dict[int, str] = dict(_AUTH_ERRORS[endpoint.auth])
    if endpoint.body is not None:
        errors |= _BODY_ERRORS
    for status, description in endpoint.errors.items():
        errors[status] = (f"{errors[status]}; {description}" if status in errors
                          else description)
    if endpoint.auth == "user":
        errors.setdefault(503, _SERVICE_ERROR + "; or, for a user JWT, the identity provider's "
                                               "JWKS could never be fetched")
    elif endpoint.auth != "none":
        errors.setdefault(503, _SERVICE_ERROR)
    for status, description in sorted(errors.items()):
        responses[str(status)] = _error(description, status)
    if endpoint.auth != "none":
        responses["503"]["headers"] = {"Retry-After": _RETRY_AFTER}
    operation["responses"] = responses
    return operation


def _schemas(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """Every model the endpoints name, as JSON Schema: bodies as they are read, answers as they
    are written."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Error, "serialization"): None}
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted[(endpoint.body, "validation")] = None
        for reply in endpoint.replies.values():
            if reply.model is not None:
                wanted[(reply.model, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=_REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    for (_model, mode), ref in refs.items():
        if mode == "validation":
            _no_nul(schemas[ref["$ref"].rsplit("/", 1)[1]])
    return dict(sorted(schemas.items()))


# What parse_body refuses in any text field of a body (api.validation.text_problem), said in
# the document too.
_NO_NUL = "^[^\\u0000]*$"


def _no_nul(schema: dict[str, Any]) -> None:
    """Mark a body's free-text fields as refusing NUL characters, as the server does."""
    for field in schema.get("properties", {}).values():
        for option in [field, *field.get("anyOf", [])]:
            if option.get("type") == "string" and not {"pattern", "enum", "const",
                                                       "format"} & option.keys():
                option["pattern"] = _NO_NUL


def build_openapi(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The whole document for ``endpoints`` (and the endpoint serving it)."""
    table = [*endpoints, openapi_endpoint({})]
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in table:
        methods = paths.setdefault(openapi_path(endpoint.path), {})
        methods[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "genq", "version": "1",
                 "description": "Job backend for AI image and video generation."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(table),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A user's API key or, when sign-in with an identity provider "
                               "is configured, the user's JWT; GENQ_ADMIN_TOKEN for /v1/admin."}},
        },
    }


def openapi_endpoint(document: Mapping[str, Any]) -> Endpoint:
    """The endpoint that serves ``document``."""
    body = dict(document)

    async def openapi(call: Call) -> Response:
        return JSONResponse(body)

    return Endpoint("GET", "/openapi.json", openapi, "openapi", "This document",
                    {200: Reply("OpenAPI 3.1", content=_json({"type": "object"}))},
                    auth="none")

