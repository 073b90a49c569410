"""Every error the API answers with, and how each exception becomes one.

The body is always ``{"error": {"code", "message", "details"}}`` (:class:`Error`). Domain errors
(:mod:`shared.errors`) carry their ``code``; :data:`HTTP_STATUS` gives each class its status, in
one table. The errors only HTTP has are defined here:

    GenqError (shared.errors)
    ├── Unauthorized               unauthorized             401
    │   └── InvalidToken           invalid_token            401
    ├── AdminDisabled              admin_disabled           403
    ├── InvalidJson                invalid_json             400
    ├── UnsupportedMediaType       unsupported_media_type   415
    ├── PayloadTooLarge            payload_too_large        413
    ├── ValidationFailed           validation_error         422
    ├── JobNotCancelable           job_not_cancelable       409
    ├── JobNotRefundable           job_not_refundable       409
    ├── RangeNotSatisfiable        range_not_satisfiable    416
    └── NotFound (shared.errors)
        ├── JobNotFound            job_not_found            404
        ├── AssetNotFound          asset_not_found          404
        ├── FileNotFound           file_not_found           404
        ├── UserNotFound           user_not_found           404
        ├── ApiKeyNotFound         api_key_not_found        404
        ├── LibraryItemNotFound    library_item_not_found   404
        └── CollectionNotFound     collection_not_found     404

Routing errors (404, 405), lost backing services (503) and unexpected exceptions (500) are
mapped here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import asyncpg
import redis.exceptions
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.errors import (
    AccountDisabled,
    AddressBlocked,
    BalanceLimitExceeded,
    ConfigError,
    Conflict,
    GenqError,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidSignature,
    NotFound,
    ObjectNotFound,
    RateLimited,
    ServiceUnavailable,
    StorageQuotaExceeded,
    UrlExpired,
)
from shared.logging import get_logger

log = get_logger(__name__)


class ErrorBody(BaseModel):
    """What went wrong: a stable ``code``, a message for people, and details (which fields,
    what was expected) or null."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    details: Any = Field(description="Depends on the code: e.g. validation_error lists "
                                     "{field, message} per problem; null when there is none.")


class Error(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(frozen=True)

    error: ErrorBody


class Unauthorized(GenqError):
    """Missing or invalid credentials."""

    code = "unauthorized"


class InvalidToken(Unauthorized):
    """A user JWT that does not verify (signature, algorithm, issuer, audience or time)."""

    code = "invalid_token"


class AdminDisabled(GenqError):
    """No admin token is configured on this server, so admin endpoints are off."""

    code = "admin_disabled"


class InvalidJson(GenqError):
    """The request body is not valid JSON."""

    code = "invalid_json"


class UnsupportedMediaType(GenqError):
    """The request body must be sent as application/json."""

    code = "unsupported_media_type"


class PayloadTooLarge(GenqError):
    """The request body is too large."""

    code = "payload_too_large"


class ValidationFailed(GenqError):
    """The request is well-formed but some fields are invalid."""

    code = "validation_error"


class JobNotCancelable(GenqError):
    """The job already finished, so it cannot be canceled."""

    code = "job_not_cancelable"


class JobNotRefundable(GenqError):
    """The job has no captured credits to give back (not finished, or nothing was spent)."""

    code = "job_not_refundable"


class JobNotFound(NotFound):
    """No such job."""

    code = "job_not_found"
    what = "job"


class AssetNotFound(NotFound):
    """No such asset, or it has expired."""

    code = "asset_not_found"
    what = "asset"


class FileNotFound(NotFound):
    """Nothing is stored at this signed URL."""

    code = "file_not_found"


class UserNotFound(NotFound):
    """No such user."""

    code = "user_not_found"
    what = "user"


class ApiKeyNotFound(NotFound):
    """No such API key (or it is another user's)."""

    code = "api_key_not_found"
    what = "API key"


class LibraryItemNotFound(NotFound):
    """No such library item (or it is another user's, or not shared)."""

    code = "library_item_not_found"
    what = "library item"


class CollectionNotFound(NotFound):
    """No such collection (or it is another user's)."""

    code = "collection_not_found"
    what = "collection"


class RangeNotSatisfiable(GenqError):
    """The requested byte range lies outside the object."""

    code = "range_not_satisfiable"


#: The HTTP status of each error class; a class without an entry takes its nearest ancestor's.
HTTP_STATUS: dict[type[GenqError], int] = {
    GenqError: 500,
    ConfigError: 500,
    ServiceUnavailable: 503,
    InsufficientCredits: 402,
    BalanceLimitExceeded: 422,
    InvalidAmount: 422,
    IdempotencyConflict: 409,
    Conflict: 409,
    RateLimited: 429,
    NotFound: 404,
    ObjectNotFound: 404,
    InvalidSignature: 403,
    UrlExpired: 403,
    AddressBlocked: 422,
    Unauthorized: 401,
    InvalidToken: 401,
    AdminDisabled: 403,
    InvalidJson: 400,
    UnsupportedMediaType: 415,
    PayloadTooLarge: 413,
    ValidationFailed: 422,
    JobNotCancelable: 409,
    JobNotRefundable: 409,
    AccountDisabled: 403,
    RangeNotSatisfiable: 416,
    StorageQuotaExceeded: 403,
    LibraryItemNotFound: 404,
    CollectionNotFound: 404,
}


def status_of(error: type[GenqError]) -> int:
    """The HTTP status of an error class (its own entry, or its nearest ancestor's)."""
    for cls in error.__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    raise TypeError(f"{error!r} is not a GenqError")


# Exceptions that mean "a backing service is not answering", not "genq is broken": 503.
SERVICE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # e.g. a pooled connection closed under us
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# The most characters of client input an error message repeats back.
ECHO_MAX_CHARS = 100


def echo(value: str) -> str:
    """Client input as an error message quotes it: cut to :data:`ECHO_MAX_CHARS`."""
    if len(value) <= ECHO_MAX_CHARS:
        return value
    return value[:ECHO_MAX_CHARS] + "..."


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error body every failure uses."""
    body = Error(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


async def genq_error_handler(request: Request, exc: Exception) -> Response:
    """A domain error: its own status and code."""
    assert isinstance(exc, GenqError)
    status = status_of(type(exc))
    headers = None
    if status == 401:
        # RFC 6750: a bad token names the error, so a client knows to sign in again.
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'
                   if isinstance(exc, InvalidToken) else "Bearer"}
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if status >= 500:
        log.error("request_failed", code=exc.code, error=exc.message)
    return error_response(status, exc.code, exc.message, exc.details, headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Routing's 404 and 405 (and any other HTTPException) in the JSON shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = f"no route for {request.method} {echo(request.url.path)}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {echo(request.url.path)}"
    return error_response(exc.status_code, code, message, None, exc.headers)


async def service_error_handler(request: Request, exc: Exception) -> Response:
    """Postgres or Redis is down or unreachable: 503, so clients retry later."""
    log.warning("service_unavailable", error=repr(exc))
    return error_response(
        503,
        "service_unavailable",
        "a backing service is unavailable; retry later",
        headers={"Retry-After": "1"},
    )


def internal_error_response() -> JSONResponse:
    """The body of an unexpected failure; the details stay in the log."""
    return error_response(500, "internal_error", "an unexpected error occurred")


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort (normally the request middleware answers first)."""
    log.error("unhandled_exception", exc_info=exc)
    return internal_error_response()


def exception_handlers() -> dict[Any, Any]:
    """The app's exception handlers, most specific first."""
    handlers: dict[Any, Any] = {GenqError: genq_error_handler, HTTPException: http_error_handler}
    for exc_class in SERVICE_ERRORS:
        handlers[exc_class] = service_error_handler
    handlers[Exception] = internal_error_handler
    return handlers
