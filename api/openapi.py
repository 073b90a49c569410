"""The OpenAPI 3.1 document of the v1 API.

Written by hand next to the routes (request bodies come from the pydantic models), and served at
``/openapi.json``. A test checks that every route of the app is documented here and nothing else.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.validation import CreditGrant, JobCreate, UserCreate
from shared.types import AssetType, JobStatus, LedgerKind

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


_TIME = {"type": ["string", "null"], "format": "date-time"}
_ID_PARAM = {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 20},
     "description": "Page size (ASCII digits); values above 100 are treated as 100."},
    {"name": "cursor", "in": "query", "schema": {"type": "string", "minLength": 1},
     "description": "The next_cursor of the previous page (opaque)."},
]
# Said on every list operation: its query string is checked as a whole.
_QUERY_RULES = ("Takes only the query parameters listed, each at most once and none empty; "
                "anything else is 422 validation_error naming the parameter.")
_BAD_QUERY = _error("validation_error: an unknown, repeated or empty query parameter, or a "
                    "bad value")
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "schema": {
    "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    "description": "1 to 255 printable ASCII characters."}
_COMMON = {"401": _error("Missing or invalid credentials"),
           "503": _error("Postgres or Redis unavailable")}
# Every operation that reads a JSON body can answer these.
_BODY_ERRORS = {"400": _error("invalid_json: malformed or empty JSON"),
                "413": _error("payload_too_large: the body is larger than GENQ_MAX_BODY_BYTES"),
                "415": _error("unsupported_media_type: not sent as application/json")}
_ADMIN = {"401": _error("Missing or wrong admin token"),
          "403": _error("Admin endpoints disabled (no GENQ_ADMIN_TOKEN)"),
          "503": _error("Postgres or Redis unavailable")}

# Where a created job leads (OpenAPI links: clients and API test tools follow them).
_JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    "ListJobAssets": {"operationId": "listAssets",
                      "parameters": {"job_id": "$response.body#/id"}},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "details"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "details": {}},
        }},
    },
    "Asset": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"}, "job_id": {"type": "string"},
            "index": {"type": "integer"}, "type": {"enum": list(AssetType)},
            "mime_type": {"type": "string"}, "size_bytes": {"type": "integer"},
            "width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]},
            "duration_seconds": {"type": ["number", "null"]},
            "seed": {"type": ["integer", "null"]}, "model": {"type": ["string", "null"]},
            "content_url": {
                "type": "string",
                "description": "A signed URL that serves the bytes without an Authorization "
                               "header until it expires (GENQ_URL_TTL_S): the store's "
                               "presigned GET (S3), or /v1/files/{key}?exp=&sig= on this API "
                               "(local folder)."},
            "created_at": _TIME, "expires_at": _TIME,
            "fps": {"type": ["number", "null"]},
            "variants": {
                "type": "object",
                "description": "Smaller copies made by the worker: `thumb` (at most 256 px, "
                               "WebP) and `web` (at most 1024 px, WebP, only for images "
                               "larger than that) for images; `poster` (the first frame, "
                               "WebP) for videos. A variant that could not be made is absent.",
                "additionalProperties": _ref("AssetVariant"),
            },
        },
    },
    "AssetVariant": {
        "type": "object", "required": ["url", "width", "height", "mime_type"],
        "properties": {"url": {"type": "string"}, "width": {"type": "integer"},
                       "height": {"type": "integer"}, "mime_type": {"type": "string"}},
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"enum": list(JobStatus)},
            "model": {"type": "string"}, "prompt": {"type": "string"},
            "ran_model": {
                "type": "string",
                "description": "The model that runs (or ran) the job: `model`, or the "
                               "model's fallback once the job moved to it because the "
                               "model's provider stayed unavailable."},
            "num_outputs": {"type": "integer"}, "params": {"type": "object"},
            "seed": {"type": ["integer", "null"]},
            "cost": {"type": "object", "properties": {
                "price_per_output": {"type": "integer"}, "reserved": {"type": "integer"},
                "captured": {"type": "integer"}, "refunded": {"type": "integer"}}},
            "outputs": {"type": "array", "items": _ref("Asset")},
            "error": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}]},
            "cancel_requested": {"type": "boolean"},
            "provider": {"type": "object", "properties": {"queue_position": {
                "type": ["integer", "null"],
                "description": "While the job waits in the provider's own queue (fal): its "
                               "place there, 0 first; null otherwise."}}},
            "created_at": _TIME, "enqueued_at": _TIME, "started_at": _TIME, "finished_at": _TIME,
        },
    },
    "LedgerEntry": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "kind": {"enum": list(LedgerKind)},
            "amount": {"type": "integer", "description": "Signed change to the balance."},
            "reserved_delta": {"type": "integer"}, "balance_after": {"type": "integer"},
            "job_id": {"type": ["string", "null"]},
            "reservation_id": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]}, "created_at": _TIME,
        },
    },
    "Model": {
        "type": "object",
        "properties": {
            "key": {"type": "string"}, "provider": {"type": "string"},
            "media_type": {"enum": list(AssetType)},
            "price_per_output": {"type": "integer",
                                 "description": "What one output costs with the default params."},
            "price_per_second": {
                "type": ["integer", "null"],
                "description": "A video model priced per second of output: a job reserves "
                               "ceil(duration) x this per output on the requested `duration` "
                               "param and is charged on each output's real duration, rounded "
                               "up to whole seconds, refunding the rest. Null: priced per "
                               "output."},
            "fallback": {
                "type": ["string", "null"],
                "description": "The model a job moves to, once, when this model's provider "
                               "stays unavailable after its retries."},
            "price_tiers": {
                "type": "array",
                "description": "Above a size (width x height / 1e6 of the merged params), one "
                               "output costs the price of the highest tier it is above.",
                "items": {"type": "object", "properties": {
                    "above_megapixels": {"type": "number"},
                    "price_per_output": {"type": "integer"}}},
            },
            "max_outputs": {"type": "integer"}, "timeout_s": {"type": "integer"},
            "params": {"type": "object", "description": "The defaults a job's params merge over."},
            "params_schema": {
                "type": "object",
                "description": "JSON Schema (Draft 2020-12) the merged params must match; keys "
                               "it does not list are refused unless it allows them.",
            },
            "description": {"type": "string"},
        },
    },
    "Credits": {"type": "object", "properties": {
        "balance": {"type": "integer"}, "reserved": {"type": "integer"}}},
    "NewUser": {"type": "object", "properties": {
        "id": {"type": "string"}, "email": {"type": "string"},
        "api_key": {"type": "string", "description": "Shown only in this response."}}},
    "GrantResult": {"type": "object", "properties": {
        "balance": {"type": "integer"}, "entry": _ref("LedgerEntry")}},
}


def _body(model: Any) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model.__name__)}}}


_CONTENT_SEMANTICS = (
    "GET or HEAD. One byte range (Range: bytes=a-b, a- or -n) answers 206 with Content-Range, "
    "a range past the end 416; If-None-Match with the ETag answers 304; the body streams "
    "with ETag, Last-Modified, Content-Disposition: inline, X-Content-Type-Options: nosniff "
    "and Cache-Control: private."
)
_CONTENT_HEADERS: list[dict[str, Any]] = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in ("Range", "If-None-Match", "If-Range")
]
_BINARY = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_CONTENT_RESPONSES: dict[str, Any] = {
    "200": {"description": "The file, with its MIME type", "content": _BINARY},
    "206": {"description": "The requested byte range", "content": _BINARY},
    "304": {"description": "Not modified (the ETag matches If-None-Match)"},
    "416": _error("range_not_satisfiable: the range starts past the end"),
}


_PATHS: dict[str, dict[str, Any]] = {
    "/v1/jobs": {
        "post": {
            "summary": "Submit a generation job", "operationId": "createJob",
            "parameters": [_IDEMPOTENCY], "requestBody": _body(JobCreate),
            "responses": {
                "202": {**_json(_ref("Job"),
                                "Accepted (or replayed: Idempotent-Replayed: true)"),
                        "links": _JOB_LINKS},
                "402": _error("insufficient_credits"),
                "409": _error("idempotency_key_reused; or conflict: the model changed during "
                              "the request, send it again"),
                "422": _error("validation_error: details name each failing field, e.g. "
                              "params.width; nothing was reserved"),
                **_BODY_ERRORS, **_COMMON,
            },
        },
        "get": {
            "summary": "List the caller's jobs, newest first", "operationId": "listJobs",
            "description": _QUERY_RULES,
            "parameters": [{"name": "status", "in": "query", "schema": {
                "enum": list(JobStatus)}},
                *_PAGE_PARAMS],
            "responses": {"200": _json(_page("Job"), "A page of jobs"), "422": _BAD_QUERY,
                          **_COMMON},
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "Get a job", "operationId": "getJob",
            "parameters": [{"name": "job_id", **_ID_PARAM}],
            "responses": {"200": _json(_ref("Job"), "The job"),
                          "404": _error("No such job"), **_COMMON},
        },
    },
    "/v1/jobs/{job_id}/cancel": {
        "post": {
            "summary": "Cancel a job", "operationId": "cancelJob",
            "parameters": [{"name": "job_id", **_ID_PARAM}],
            "responses": {
                "200": _json(_ref("Job"), "Was queued: canceled and refunded"),
                "202": _json(_ref("Job"), "Is running: cancel requested"),
                "404": _error("No such job"), "409": _error("job_not_cancelable"), **_COMMON,
            },
        },
    },
    "/v1/credits": {
        "get": {"summary": "Balance and reserved credits", "operationId": "getCredits",
                "responses": {"200": _json(_ref("Credits"), "The account"), **_COMMON}},
    },
    "/v1/credits/ledger": {
        "get": {"summary": "Ledger entries, newest first", "operationId": "listLedger",
                "description": _QUERY_RULES, "parameters": _PAGE_PARAMS,
                "responses": {"200": _json(_page("LedgerEntry"), "A page of entries"),
                              "422": _BAD_QUERY, **_COMMON}},
    },
    "/v1/models": {
        "get": {"summary": "The model catalog", "operationId": "listModels",
                "description": "Takes no query parameters: any is 422 validation_error.",
                "responses": {"200": _json(
                    {"type": "object", "properties": {
                        "data": {"type": "array", "items": _ref("Model")}}},
                    "Enabled models"), "422": _BAD_QUERY, **_COMMON}},
    },
    "/v1/assets": {
        "get": {"summary": "The caller's workspace assets", "operationId": "listAssets",
                "description": _QUERY_RULES,
                "parameters": [{"name": "job_id", "in": "query",
                                "schema": {"type": "string", "format": "uuid"}}, *_PAGE_PARAMS],
                "responses": {"200": _json(_page("Asset"), "A page of assets"),
                              "422": _BAD_QUERY, **_COMMON}},
    },
    "/v1/assets/{asset_id}": {
        "get": {"summary": "Get an asset", "operationId": "getAsset",
                "parameters": [{"name": "asset_id", **_ID_PARAM}],
                "responses": {"200": _json(_ref("Asset"), "The asset"),
                              "404": _error("No such asset"), **_COMMON}},
    },
    "/v1/assets/{asset_id}/content": {
        "get": {"summary": "Download an asset's bytes", "operationId": "getAssetContent",
                "description": _CONTENT_SEMANTICS,
                "parameters": [{"name": "asset_id", **_ID_PARAM}, *_CONTENT_HEADERS],
                "responses": {**_CONTENT_RESPONSES,
                              "404": _error("No such asset"), **_COMMON}},
    },
    "/v1/files/{key}": {
        "get": {"summary": "Download stored bytes by a signed URL (an asset's content_url)",
                "operationId": "getSignedFile", "security": [],
                "description": "No Authorization header: the URL's signature is the "
                               "credential. " + _CONTENT_SEMANTICS,
                "parameters": [
                    {"name": "key", "in": "path", "required": True,
                     "schema": {"type": "string"}, "description": "The storage key (a path)"},
                    {"name": "exp", "in": "query", "required": True,
                     "schema": {"type": "integer"}, "description": "Expiry, Unix seconds"},
                    {"name": "sig", "in": "query", "required": True,
                     "schema": {"type": "string"},
                     "description": "HMAC-SHA256 of the key and expiry, base64url"},
                    *_CONTENT_HEADERS],
                "responses": {**_CONTENT_RESPONSES,
                              "403": _error("invalid_signature (tampered) or url_expired"),
                              "404": _error("Nothing stored at this URL")}},
    },
    "/v1/assets/{asset_id}/variants/{kind}": {
        "get": {"summary": "Download an asset variant's bytes", "operationId": "getAssetVariant",
                "description": "The variant's WebP bytes with the Authorization header (its "
                               "`url` on the asset is the same without it). "
                               + _CONTENT_SEMANTICS,
                "parameters": [{"name": "asset_id", **_ID_PARAM},
                               {"name": "kind", "in": "path", "required": True,
                                "schema": {"enum": ["thumb", "web", "poster"]}},
                               *_CONTENT_HEADERS],
                "responses": {**_CONTENT_RESPONSES,
                              "404": _error("No such asset or variant"), **_COMMON}},
    },
    "/v1/admin/users": {
        "post": {"summary": "Create a user and API key (admin)", "operationId": "createUser",
                 "requestBody": _body(UserCreate),
                 "responses": {"201": {**_json(_ref("NewUser"), "Created"), "links": {
                     "GrantCredits": {"operationId": "grantCredits",
                                      "parameters": {"user_id": "$response.body#/id"}}}},
                               "409": _error("email_taken"), "422": _error("validation_error"),
                               **_BODY_ERRORS, **_ADMIN}},
    },
    "/v1/admin/users/{user_id}/credits": {
        "post": {"summary": "Grant credits (admin, idempotent)", "operationId": "grantCredits",
                 "parameters": [{"name": "user_id", **_ID_PARAM}, _IDEMPOTENCY],
                 "requestBody": _body(CreditGrant),
                 "responses": {"200": _json(_ref("GrantResult"), "Granted (or replayed)"),
                               "404": _error("No such user"),
                               "409": _error("idempotency_key_reused"),
                               "422": _error("validation_error, or balance_limit_exceeded: "
                                             "the account would hold more than 10^15 credits"),
                               **_BODY_ERRORS, **_ADMIN}},
    },
    "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz", "security": [],
                         "responses": {"200": {"description": "The process answers"}}}},
    "/readyz": {"get": {"summary": "Readiness: Postgres and Redis", "operationId": "readyz",
                        "security": [],
                        "responses": {"200": {"description": "Ready"},
                                      "503": _error("A backing service is down")}}},
    "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                              "security": [],
                              "responses": {"200": {"description": "OpenAPI 3.1"}}}},
}


def build_openapi() -> dict[str, Any]:
    """The whole document."""
    schemas = dict(_SCHEMAS)
    for model in (JobCreate, UserCreate, CreditGrant):
        schemas[model.__name__] = model.model_json_schema(ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "genq", "version": "1",
                 "description": "Job backend for AI image and video generation."},
        "security": [{"bearer": []}],
        "paths": _PATHS,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A user's API key, or GENQ_ADMIN_TOKEN for /v1/admin."}},
        },
    }


def openapi_endpoint(document: dict[str, Any]) -> Any:
    """A handler that serves ``document``."""

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return openapi
