"""Bearer authentication: users by API key or by their identity provider's JWT
(:mod:`api.tokens`), operators by the admin token.

API keys are 256-bit random secrets stored as SHA-256 digests, so a lookup is one indexed query
and no slow KDF is needed. Positive lookups are cached in-process for ``api_key_cache_ttl_s``;
failures are never cached. A revoked key or a disabled user leaves every process's cache at once
(:mod:`api.revocations`, Redis pub/sub), and while a process is not subscribed it uses no cached
entry at all, so a revocation takes effect everywhere without waiting for the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from pydantic import SecretStr
from starlette.requests import Request

from api.errors import AdminDisabled, InvalidToken, Unauthorized
from api.tokens import MAX_TOKEN_CHARS, TokenVerifier, looks_like_jwt
from shared.errors import AccountDisabled
from shared.identities import Identity, user_for_identity
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
    """Key digest -> user id, each entry valid for ``ttl_s`` seconds, at most ``max_entries``.

    ``live``: whether invalidations reach this cache (its process is subscribed to them); while
    it is not, nothing is served from it. ``epoch`` counts invalidations: a lookup that started
    before one must not put what it read (it may be the revoked key), so :meth:`put` takes the
    epoch the lookup started in.
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        *,
        live: bool = True,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[uuid.UUID, float]] = {}
        self.live = live
        self.epoch = 0

    def invalidate(self, digest: bytes) -> None:
        """Forget one key."""
        self.epoch += 1
        self._entries.pop(digest, None)

    def drop_user(self, user_id: uuid.UUID) -> None:
        """Forget every entry of one user (disabled)."""
        self.epoch += 1
        for key in [k for k, (u, _) in self._entries.items() if u == user_id]:
            del self._entries[key]

    def clear(self, *, live: bool | None = None) -> None:
        """Forget everything (and, with ``live``, say whether invalidations arrive now)."""
        self.epoch += 1
        self._entries.clear()
        if live is not None:
            self.live = live

    def get(self, digest: bytes) -> uuid.UUID | None:
        """The cached user id, or None if absent or expired (or the cache is not live)."""
        if not self.live:
            return None
        entry = self._entries.get(digest)
        if entry is None:
            return None
        user_id, expires_at = entry
        if self._clock() >= expires_at:
            self._entries.pop(digest, None)
            return None
        return user_id

    def put(self, digest: bytes, user_id: uuid.UUID, epoch: int | None = None) -> None:
        """Remember a successful lookup that started in ``epoch`` (no-op when the TTL is 0, the
        cache is not live, or an invalidation came since)."""
        if self.ttl_s <= 0 or not self.live or (epoch is not None and epoch != self.epoch):
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


def bearer_token(authorization: str | None, max_chars: int = MAX_CREDENTIAL_CHARS) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > max_chars:
        return None
    return token


def _identity_digest(identity: Identity) -> bytes:
    """The key cache's entry for an identity (never equal to an API key's digest)."""
    return hashlib.sha256(
        b"identity\0" + identity.issuer.encode("utf-8") + b"\0"
        + identity.subject.encode("utf-8")).digest()


async def _authenticate_jwt(keys: ApiKeyCache, pool: Pool, tokens: TokenVerifier,
                            token: str, new_user_credits: int) -> uuid.UUID:
    """The user a verified JWT signs in as, created on first sight."""
    identity = await tokens.verify(token)
    digest = _identity_digest(identity)
    user_id = keys.get(digest)
    if user_id is None:
        epoch = keys.epoch
        user_id = await user_for_identity(pool, identity, new_user_credits)
        if await pool.fetchval(queries["user_disabled"], user_id):
            raise AccountDisabled("this account is disabled")
        keys.put(digest, user_id, epoch)
    return user_id


async def authenticate(keys: ApiKeyCache, pool: Pool, request: Request,
                       tokens: TokenVerifier | None = None,
                       new_user_credits: int = 0) -> uuid.UUID:
    """The id of the user whose API key (or, with ``tokens``, JWT) the request carries;
    :class:`Unauthorized` (:class:`InvalidToken` for a JWT) otherwise."""
    token = bearer_token(request.headers.get("authorization"),
                         MAX_TOKEN_CHARS if tokens is not None else MAX_CREDENTIAL_CHARS)
    if token is None:
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <api key>'"
                           + (" or 'Bearer <JWT>'" if tokens is not None else ""))
    if tokens is not None and looks_like_jwt(token):
        signed_in = await _authenticate_jwt(keys, pool, tokens, token, new_user_credits)
        structlog.contextvars.bind_contextvars(user_id=str(signed_in))
        return signed_in
    if len(token) > MAX_CREDENTIAL_CHARS:
        raise Unauthorized("invalid API key")
    digest = hash_api_key(token)
    user_id = keys.get(digest)
    if user_id is None:
        epoch = keys.epoch
        row = await pool.fetchrow(queries["user_for_api_key"], digest)
        if row is None:
            raise Unauthorized("invalid API key")
        if row["disabled"]:
            raise AccountDisabled("this account is disabled")
        user_id = row["id"]
        assert isinstance(user_id, uuid.UUID)
        keys.put(digest, user_id, epoch)
    structlog.contextvars.bind_contextvars(user_id=str(user_id))
    return user_id


def _admin_refused(request: Request, reason: str) -> None:
    """Log a refused admin request: who and why, never what it presented."""
    log.warning("admin_auth_failed", reason=reason,
                client=request.client.host if request.client else None)


def require_admin(admins: Sequence[tuple[str, SecretStr]], request: Request) -> str:
    """The name of the admin whose token the request carries (each of ``admins`` compared in
    constant time, all of them every time)."""
    if not admins:
        _admin_refused(request, "admin_disabled")
        raise AdminDisabled("admin endpoints are disabled: GENQ_ADMIN_TOKEN is not set")
    token = bearer_token(request.headers.get("authorization"), MAX_TOKEN_CHARS)
    if token is None:
        _admin_refused(request, "missing_or_malformed")
        raise Unauthorized("missing or malformed Authorization header; use 'Bearer <admin token>'")
    presented = token.encode("utf-8")
    found = None
    for name, secret in admins:
        if hmac.compare_digest(presented, secret.get_secret_value().encode("utf-8")):
            found = name
    if found is not None:
        return found
    _admin_refused(request, "invalid_token")
    if looks_like_jwt(token):
        raise InvalidToken("admin routes never accept a user's token; use the admin token",
                           details={"reason": "not_admin"})
    raise Unauthorized("invalid admin token")
