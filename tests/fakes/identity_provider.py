"""A fake identity provider: a real HTTP server on 127.0.0.1 publishing a JWKS, keys made here,
tokens signed with PyJWT.

It publishes the public halves of :attr:`FakeIdentityProvider.published` at ``/jwks.json`` and
counts every fetch. :meth:`rotate` adds a new key (and may drop the old ones), as a provider
rotating its signing keys does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.serving import ThreadedServer

ISSUER = "https://idp.test/auth/v1"
AUDIENCE = "authenticated"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """One key pair of the provider, named by ``kid``."""

    kid: str
    private: PrivateKey
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


def new_key(alg: str = "RS256") -> SigningKey:
    """A fresh key pair for ``alg`` (RS256 or ES256)."""
    private: PrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(alg)
    return SigningKey(uuid.uuid4().hex[:16], private, alg)


def claims(sub: str | None = None, *, lifetime_s: int = 3600, **extra: Any) -> dict[str, Any]:
    """The claims of a session token as Supabase makes them (``sub`` random unless given)."""
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub or str(uuid.uuid4()),
            "iat": now, "exp": now + lifetime_s, "role": "authenticated", **extra}


class FakeIdentityProvider:
    """Start with :meth:`start`, stop with :meth:`stop`; ``jwks_url`` is what settings take."""

    def __init__(self, *keys: SigningKey) -> None:
        self.published: list[SigningKey] = list(keys) or [new_key()]
        self.fetches = 0
        self._lock = threading.Lock()
        self._server = ThreadedServer()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/jwks.json"

    @property
    def key(self) -> SigningKey:
        """The newest published key."""
        return self.published[-1]

    def rotate(self, *, keep_old: bool = True) -> SigningKey:
        """Publish a new key (keeping the old ones published unless ``keep_old`` is False)."""
        key = new_key(self.key.alg)
        with self._lock:
            self.published = [*self.published, key] if keep_old else [key]
        return key

    def token(self, payload: dict[str, Any], key: SigningKey | None = None,
              **header: Any) -> str:
        """``payload`` signed with ``key`` (the newest by default), its ``kid`` in the header."""
        key = key or self.key
        return jwt.encode(payload, key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **header})

    async def _jwks(self, request: Request) -> Response:
        with self._lock:
            self.fetches += 1
            keys = [k.public_jwk() for k in self.published]
        return JSONResponse({"keys": keys})

    def start(self) -> FakeIdentityProvider:
        app = Starlette(routes=[Route("/jwks.json", self._jwks, methods=["GET"])])
        self._server.start(app, "fake identity provider")
        return self

    def stop(self) -> None:
        self._server.stop()
