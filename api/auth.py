"""Bearer authentication: users by API key, operators by the admin token.

API keys are 256-bit random secrets stored as SHA-256 digests, so a lookup is one indexed query
and no slow KDF is needed. Positive lookups are cached in-process for ``api_key_cache_ttl_s``
(a revoked key keeps working on a process for at most that long); failures are never cached.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from pydantic import SecretStr
from starlette.requests import Request

from api.errors import AdminDisabled, Unauthorized
from shared.logging import get_logger
from shared.users import hash_api_key
from sql import queries

if TYPE_CHECKING:
    from shared.db import Pool

log = get_logger(__name__)

# Real keys are ~46 characters; anything much longer is not worth hashing or looking up.
MAX_CREDENTIAL_CHARS = 512
DEFAULT_CACHE_ENTRIES = 10_000


class ApiKeyCache:
    """Key digest -> user id, each entry valid for ``ttl_s`` seconds, at most ``max_entries``."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[uuid.UUID, float]] = {}

    def get(self, digest: bytes) -> uuid.UUID | None:
        """The cached user id, or None if absent or expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        user_id, expires_at = entry
        if self._clock() >= expires_at:
            self._entries.pop(digest, None)
            return None
        return user_id

    def put(self, digest: bytes, user_id: uuid.UUID) -> None:
        """Remember a successful lookup (no-op when the TTL is 0)."""
        if self.ttl_s <= 0:
            return
        if digest not in self._entries and len(self._entries) >= self.max_entries:
            now = self._clock()
            for key in [k for k, (_, exp) in self._entries.items() if exp <= now]:
                del self._entries[key]
            while len(self._entries) >= self.max_entries:
                # Oldest insertion first: dicts keep insertion order.
                del self._entries[next(iter(self._entries))]
        self._entries[digest] = (user_id, self._clock() + self.ttl_s)

    def __len__(self) -> int:
        return len(self._entries)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_CREDENTIAL_CHARS:
        return None
    return token


async def authenticate(keys: ApiKeyCache, pool: Pool, request: Request) -> uuid.UUID:
    """The id of the user whose API key the request carries; :class:`Unauthorized` otherwise."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <api key>'")
    digest = hash_api_key(token)
    user_id = keys.get(digest)
    if user_id is None:
        row = await pool.fetchrow(queries["user_for_api_key"], digest)
        if row is None:
            raise Unauthorized("invalid API key")
        user_id = row["id"]
        assert isinstance(user_id, uuid.UUID)
        keys.put(digest, user_id)
    structlog.contextvars.bind_contextvars(user_id=str(user_id))
    return user_id


def _admin_refused(request: Request, reason: str) -> None:
    """Log a refused admin request: who and why, never what it presented."""
    log.warning("admin_auth_failed", reason=reason,
                client=request.client.host if request.client else None)


def require_admin(configured: SecretStr | None, request: Request) -> None:
    """Pass if the request carries the ``configured`` admin token (compared in constant
    time)."""
    if configured is None or not configured.get_secret_value():
        _admin_refused(request, "admin_disabled")
        raise AdminDisabled("admin endpoints are disabled: GENQ_ADMIN_TOKEN is not set")
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        _admin_refused(request, "missing_or_malformed")
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <admin token>'")
    if not hmac.compare_digest(
        token.encode("utf-8"), configured.get_secret_value().encode("utf-8")
    ):
        _admin_refused(request, "invalid_token")
        raise Unauthorized("invalid admin token")
