"""Domain errors. Each has a stable ``code`` that the API maps to an HTTP status."""

from __future__ import annotations

from typing import Any


class GenqError(Exception):
    """Base of every error genq raises on purpose."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.details = details


class ConfigError(GenqError):
    """The settings are invalid."""

    code = "config_error"


class ServiceUnavailable(GenqError):
    """A backing service (Postgres or Redis) is not answering."""

    code = "service_unavailable"
    status = 503


class InsufficientCredits(GenqError):
    """The account's balance is too low for this operation."""

    code = "insufficient_credits"
    status = 402


class BalanceLimitExceeded(GenqError):
    """An account holds at most 10^15 credits, spendable plus reserved."""

    code = "balance_limit_exceeded"
    status = 422


class IdempotencyConflict(GenqError):
    """This idempotency key was already used with different parameters."""

    code = "idempotency_key_reused"
    status = 409


class NotFound(GenqError):
    """The resource does not exist."""

    code = "not_found"
    status = 404


class AccountNotFound(NotFound):
    """No credit account for this user."""

    code = "account_not_found"


class ReservationNotFound(NotFound):
    """No such reservation."""

    code = "reservation_not_found"


class InvalidAmount(GenqError):
    """The amount is out of range for this operation."""

    code = "invalid_amount"
    status = 422


class Conflict(GenqError):
    """The resource is not in a state that allows this operation."""

    code = "conflict"
    status = 409


class RateLimited(GenqError):
    """Too many requests; try again after ``retry_after_s`` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str | None = None, *, retry_after_s: float,
                 details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s
