"""Domain errors: what genq refuses or cannot do, each with a stable ``code``.

A domain error says what went wrong, never how to answer it over HTTP: the API maps each class
to a status in one table (:data:`api.errors.HTTP_STATUS`), and holds the errors only HTTP has
(credentials, bodies, validation, ranges). The worker's own errors (providers, outputs) subclass
:class:`GenqError` in ``worker/``; they never reach a client.

    GenqError                      internal_error
    ├── ConfigError                config_error
    ├── ServiceUnavailable         service_unavailable
    ├── InsufficientCredits        insufficient_credits
    ├── BalanceLimitExceeded       balance_limit_exceeded
    ├── InvalidAmount              invalid_amount
    ├── IdempotencyConflict        idempotency_key_reused
    ├── StorageQuotaExceeded       storage_quota_exceeded
    ├── Conflict                   conflict
    │   ├── EmailTaken             email_taken
    │   └── CollectionNameTaken    collection_name_taken
    ├── RateLimited                rate_limited
    ├── AccountDisabled            account_disabled
    ├── NotFound                   not_found
    │   ├── AccountNotFound        account_not_found
    │   └── ReservationNotFound    reservation_not_found
    ├── ObjectNotFound             object_not_found
    ├── InvalidSignature           invalid_signature
    ├── UrlExpired                 url_expired
    └── AddressBlocked             output_address_blocked
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class GenqError(Exception):
    """Base of every error genq raises on purpose."""

    code = "internal_error"

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


class InsufficientCredits(GenqError):
    """The account's balance is too low for this operation."""

    code = "insufficient_credits"


class BalanceLimitExceeded(GenqError):
    """An account holds at most 10^15 credits, spendable plus reserved."""

    code = "balance_limit_exceeded"


class IdempotencyConflict(GenqError):
    """This idempotency key was already used with different parameters."""

    code = "idempotency_key_reused"


class NotFound(GenqError):
    """The resource does not exist."""

    code = "not_found"
    #: What the resource is called in the message of :meth:`of`.
    what: ClassVar[str] = "resource"

    @classmethod
    def of(cls, ref: object) -> Self:
        """The error for the resource ``ref`` names: ``no <what> <ref>``."""
        return cls(f"no {cls.what} {ref}")


class AccountNotFound(NotFound):
    """No credit account for this user."""

    code = "account_not_found"


class ReservationNotFound(NotFound):
    """No such reservation."""

    code = "reservation_not_found"


class InvalidAmount(GenqError):
    """The amount is out of range for this operation."""

    code = "invalid_amount"


class Conflict(GenqError):
    """The resource is not in a state that allows this operation."""

    code = "conflict"


class RateLimited(GenqError):
    """Too many requests; try again after ``retry_after_s`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after_s: float,
                 details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class AccountDisabled(GenqError):
    """An admin disabled this user: their credentials are refused and nothing new is held."""

    code = "account_disabled"


class EmailTaken(Conflict):
    """A user with this email already exists."""

    code = "email_taken"


class CollectionNameTaken(Conflict):
    """The user already has a collection with this name."""

    code = "collection_name_taken"


class StorageQuotaExceeded(GenqError):
    """Saving this would take the library past the user's storage quota."""

    code = "storage_quota_exceeded"


class ObjectNotFound(GenqError):
    """Nothing is stored under the key."""

    code = "object_not_found"


class InvalidSignature(GenqError):
    """The URL's signature does not match its key and expiry (tampered, or another key)."""

    code = "invalid_signature"


class UrlExpired(GenqError):
    """The signed URL is past its expiry."""

    code = "url_expired"


class AddressBlocked(GenqError):
    """A URL genq was asked to call (an output to download, a webhook) points at a private,
    loopback, link-local or reserved address (``shared.netguard``). The code is the one a job
    whose output was refused ends with."""

    code = "output_address_blocked"
