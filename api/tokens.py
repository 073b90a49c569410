"""End-user JWTs from the product's identity provider (Supabase, Auth0, Keycloak, ...).

A token is verified with PyJWT against the provider's JWKS (``GENQ_JWT_JWKS_URL``: RS256 or
ES256 keys by ``kid``) or a shared secret (``GENQ_JWT_SECRET``: HS256), and must carry the
configured issuer and audience, ``sub`` and ``exp`` (``nbf`` and ``iat`` checked when present),
with ``GENQ_JWT_LEEWAY_S`` of clock skew allowed. Only the algorithm of the key that verifies
it is accepted: no ``alg: none``, no HS256 made with a public key.

The JWKS is fetched on first use and kept for ``GENQ_JWT_JWKS_CACHE_S``; a token signed with a
``kid`` the cached set lacks (the provider rotated its keys) refetches it, at most once per
``GENQ_JWT_JWKS_REFETCH_S``, so tokens with made-up ``kid``s cannot make genq hammer the
provider. A refused token answers 401 ``invalid_token`` with a reason (``details.reason``)
that never repeats key material.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt

from api.errors import InvalidToken
from shared.errors import ServiceUnavailable
from shared.identities import Identity
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

#: The algorithms a JWKS key may sign with (the key's own one is required of each token).
JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})
#: The algorithm of the shared secret.
HMAC_ALGORITHM = "HS256"
#: Longest token looked at (a session token with rich metadata is a few KiB).
MAX_TOKEN_CHARS = 8192
#: Longest ``sub`` and ``email`` kept.
MAX_CLAIM_CHARS = 255
#: A JWKS larger than this is refused.
MAX_JWKS_BYTES = 1024 * 1024
JWKS_TIMEOUT_S = 10.0


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer credential is a JWT (three base64url parts) rather than an API key."""
    return token.count(".") == 2 and token.startswith("eyJ")


def _refuse(reason: str, message: str) -> InvalidToken:
    return InvalidToken(message, details={"reason": reason})


class JwksCache:
    """The provider's signing keys by ``kid``, fetched lazily, refetched on an unknown ``kid``
    at most once per ``refetch_s``."""

    def __init__(self, url: str, cache_s: float, refetch_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.cache_s = cache_s
        self.refetch_s = refetch_s
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._expires_at = 0.0
        self._last_refetch: float | None = None
        self._lock = asyncio.Lock()
        #: How many times the JWKS was fetched (successfully or not).
        self.fetches = 0

    async def _fetch(self) -> None:
        """Fetch the set; keep the old keys if the provider does not answer with a usable one."""
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_S) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code}")
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("too large")
            data = json.loads(response.content)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            keyset = jwt.PyJWKSet.from_dict(data)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("jwks_fetch_failed", url=self.url, error=str(exc)[:200])
            if self._keys is None:
                raise ServiceUnavailable(
                    "the identity provider's signing keys (GENQ_JWT_JWKS_URL) could not be "
                    "fetched") from exc
            # Keep the keys held; try the provider again after the refetch interval, not on
            # every request meanwhile.
            self._expires_at = self._clock() + max(self.refetch_s, 1.0)
            return
        self._keys = {key.key_id: key for key in keyset.keys}
        self._expires_at = self._clock() + self.cache_s
        log.info("jwks_fetched", url=self.url, keys=len(self._keys))

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key ``kid`` names (a lone key when the token names none), or None."""
        if self._keys is None or self._clock() >= self._expires_at:
            async with self._lock:
                if self._keys is None or self._clock() >= self._expires_at:
                    await self._fetch()
        found = self._lookup(kid)
        if found is None and kid is not None:
            async with self._lock:
                found = self._lookup(kid)
                now = self._clock()
                if found is None and (self._last_refetch is None
                                      or now - self._last_refetch >= self.refetch_s):
                    self._last_refetch = now
                    await self._fetch()
                    found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)


class TokenVerifier:
    """Checks user JWTs as the settings say and names the identity each one carries."""

    def __init__(self, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.jwt_issuer is None or settings.jwt_audience is None:
            raise ValueError("a TokenVerifier needs GENQ_JWT_ISSUER and GENQ_JWT_AUDIENCE")
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway_s = settings.jwt_leeway_s
        self.secret = (settings.jwt_secret.get_secret_value()
                       if settings.jwt_secret is not None else None)
        self.jwks = (JwksCache(settings.jwt_jwks_url, settings.jwt_jwks_cache_s,
                               settings.jwt_jwks_refetch_s, clock)
                     if settings.jwt_jwks_url is not None else None)

    async def verify(self, token: str) -> Identity:
        """The identity a valid token carries; :class:`InvalidToken` otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _refuse("malformed", "the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("malformed", "the token's kid is not a string")
        key: Any
        if alg == HMAC_ALGORITHM and self.secret is not None:
            key = self.secret
        elif isinstance(alg, str) and alg in JWKS_ALGORITHMS and self.jwks is not None:
            jwk = await self.jwks.key(kid)
            if jwk is None:
                raise _refuse("unknown_key", "the token is signed with a key the identity "
                                             "provider does not publish")
            if jwk.algorithm_name != alg:
                raise _refuse("algorithm_not_allowed",
                              "the token's algorithm does not match its signing key")
            key = jwk.key
        else:
            raise _refuse("algorithm_not_allowed",
                          f"tokens signed with {str(alg)[:20]!r} are not accepted")
        claims = self._decode(token, key, alg)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_CLAIM_CHARS:
            raise _refuse("invalid_claims", "the token's sub claim is not a non-empty string")
        email = claims.get("email")
        if not isinstance(email, str) or not email.strip() or len(email) > MAX_CLAIM_CHARS:
            email = None
        return Identity(self.issuer, subject, email.strip() if email else None)

    def _decode(self, token: str, key: Any, alg: str) -> Mapping[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"],
                         "enforce_minimum_key_length": True})
        except jwt.ExpiredSignatureError:
            raise _refuse("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise _refuse("wrong_issuer", "the token was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise _refuse("wrong_audience", "the token is meant for another audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse("invalid_claims",
                          f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _refuse("bad_signature", "the token's signature does not verify") from None
        except jwt.InvalidKeyError:
            raise _refuse("unknown_key", "the token's signing key is not usable") from None
        except jwt.InvalidAlgorithmError:
            raise _refuse("algorithm_not_allowed",
                          "the token's algorithm is not accepted") from None
        except jwt.PyJWTError:
            raise _refuse("malformed", "the token is not a valid JWT") from None
        return claims
