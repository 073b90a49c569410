"""End users signed in by their identity provider's JWT, through the real app, Postgres and Redis.

Keys and tokens are made here with PyJWT; the JWKS is served by a real HTTP server on 127.0.0.1
(tests/fakes/identity_provider.py) that counts its fetches and rotates its keys mid-test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from api.context import ApiContext
from api.tokens import JwksCache
from shared.db import Pool
from shared.settings import Settings
from shared.storage import asset_key
from shared.users import hash_api_key, new_api_key
from sql import queries
from tests.fakes.identity_provider import (
    AUDIENCE,
    ISSUER,
    FakeIdentityProvider,
    claims,
    new_key,
)
from tests.integration.api_support import ADMIN, Api, running_app

STARTING_CREDITS = 100
SECRET = "a-shared-hs256-secret-of-at-least-32-characters"
JOB = {"model": "local/poster", "prompt": "a lighthouse at dusk", "num_outputs": 2}  # 3 each


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT put together by hand (PyJWT will not make the forgeries below)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def _hs256(payload: dict[str, Any], secret: bytes, kid: str | None = None) -> str:
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    unsigned = _raw_token(header, payload).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(name="idp")
def idp_fixture() -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider().start()
    yield provider
    provider.stop()


def jwt_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={
        "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "new_user_credits": STARTING_CREDITS,
        # One refetch per hour at most: the test counts them.
        "jwt_jwks_refetch_s": 3600.0, **update})


@pytest.fixture(name="api")
async def jwks_api_fixture(settings: Settings, pool: Pool,
                           idp: FakeIdentityProvider) -> AsyncIterator[Api]:
    configured = jwt_settings(settings, jwt_jwks_url=idp.jwks_url)
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


async def _count(pool: Pool, table: str) -> int:
    value = await pool.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(value, int)
    return value


async def test_a_signed_in_users_me_shows_their_plan_and_credits_beside_the_identities(
    api: Api, idp: FakeIdentityProvider
) -> None:
    sub = str(uuid.uuid4())
    token = idp.token(claims(sub, email="plan@example.com"))
    me = await api.client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["plan"]["name"] == "free"
    assert body["max_running"] is None
    assert body["credits"] == {"balance": STARTING_CREDITS, "reserved": 0}
    assert [i["subject"] for i in body["identities"]] == [sub]
    # An admin puts the user on a plan with their own cap: the one route shows both.
    put = await api.client.put(f"/v1/admin/users/{body['id']}/plan",
                               json={"plan": "free", "max_running": 3}, headers=ADMIN)
    assert put.status_code == 200, put.text
    assert put.json()["max_running"] == 3
    assert [i["subject"] for i in put.json()["identities"]] == [sub]
    after = (await api.client.get("/v1/me", headers=bearer(token))).json()
    assert (after["id"], after["max_running"], after["plan"]["name"]) == (body["id"], 3, "free")
    assert [i["subject"] for i in after["identities"]] == [sub]


async def test_first_token_creates_the_user_with_its_starting_credits(
    api: Api, idp: FakeIdentityProvider
) -> None:
    sub = str(uuid.uuid4())
    token = idp.token(claims(sub, email="ada@example.com"))
    me = await api.client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["email"] == "ada@example.com"
    assert [(i["issuer"], i["subject"], i["email"]) for i in body["identities"]] == [
        (ISSUER, sub, "ada@example.com")]
    credits = await api.client.get("/v1/credits", headers=bearer(token))
    assert credits.json() == {"balance": STARTING_CREDITS, "reserved": 0}
    ledger = (await api.client.get("/v1/credits/ledger", headers=bearer(token))).json()["data"]
    assert [(e["kind"], e["amount"], e["reason"]) for e in ledger] == [
        ("grant", STARTING_CREDITS, "starting credits")]
    # A second token of the same subject (a new session) is the same user, granted nothing more.
    again = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub))))
    assert again.json()["id"] == body["id"]
    assert (await api.client.get("/v1/credits", headers=bearer(token))).json()["balance"] == (
        STARTING_CREDITS)


async def test_a_token_without_email_makes_a_user_without_one(
    api: Api, idp: FakeIdentityProvider
) -> None:
    taken = await api.client.post("/v1/admin/users", json={"email": "taken@example.com"},
                                  headers=ADMIN)
    assert taken.status_code == 201
    extras: list[dict[str, Any]] = [{}, {"email": "taken@example.com"}]
    for extra in extras:
        sub = str(uuid.uuid4())
        me = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub, **extra))))
        assert me.status_code == 200, me.text
        assert me.json()["email"] is None
        assert me.json()["identities"][0]["email"] == extra.get("email")


async def test_valid_tokens_pass_before_and_after_a_key_rotation(
    api: Api, idp: FakeIdentityProvider
) -> None:
    sub = str(uuid.uuid4())
    old_key = idp.key
    before = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub))))
    assert before.status_code == 200, before.text
    assert idp.fetches == 1
    for _ in range(5):  # cached: no more fetches
        r = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub))))
        assert r.status_code == 200
    assert idp.fetches == 1

    idp.rotate(keep_old=False)  # the provider signs with a new key and retires the old one
    after = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub))))
    assert after.status_code == 200, after.text
    assert after.json()["id"] == before.json()["id"]
    assert idp.fetches == 2  # the new kid refetched the set once

    retired = await api.client.get("/v1/me", headers=bearer(idp.token(claims(sub), old_key)))
    assert retired.status_code == 401
    assert retired.json()["error"]["code"] == "invalid_token"
    assert retired.json()["error"]["details"] == {"reason": "unknown_key"}


async def test_unknown_kids_refetch_once_not_per_request(
    api: Api, idp: FakeIdentityProvider
) -> None:
    ok = await api.client.get("/v1/credits", headers=bearer(idp.token(claims())))
    assert ok.status_code == 200, ok.text
    assert idp.fetches == 1
    users = await _count(api.pool, "users")
    stranger = new_key()  # never published

    async def attempt(i: int) -> httpx.Response:
        token = idp.token(claims(), stranger, kid=uuid.uuid4().hex)
        return await api.client.get("/v1/credits", headers=bearer(token))

    answers: list[httpx.Response] = []
    for start in range(0, 500, 50):
        answers += await asyncio.gather(*(attempt(i) for i in range(start, start + 50)))
    assert len(answers) == 500
    assert {r.status_code for r in answers} == {401}
    assert {r.json()["error"]["code"] for r in answers} == {"invalid_token"}
    assert {r.json()["error"]["details"]["reason"] for r in answers} == {"unknown_key"}
    assert idp.fetches == 2
    assert await _count(api.pool, "users") == users
    # The published key still works after the storm.
    ok = await api.client.get("/v1/credits", headers=bearer(idp.token(claims())))
    assert ok.status_code == 200


def _refusals(idp: FakeIdentityProvider) -> dict[str, tuple[str, str, str]]:
    """name -> (path, token, reason): every token here must be refused."""
    now = int(time.time())
    key = idp.key
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = idp.token(claims())
    header, _, signature = valid.split(".")
    forged_payload = _b64(json.dumps(claims("someone-else")).encode())
    return {
        "alg none": ("/v1/credits", _raw_token({"alg": "none", "typ": "JWT"}, claims()),
                     "algorithm_not_allowed"),
        "HS256 with the RSA public key": ("/v1/credits", _hs256(claims(), public_pem, key.kid),
                                          "algorithm_not_allowed"),
        "expired": ("/v1/credits", idp.token(claims(iat=now - 7200, exp=now - 3600)),
                    "expired"),
        "not yet valid": ("/v1/credits", idp.token(claims(nbf=now + 3600)), "not_yet_valid"),
        "wrong issuer": ("/v1/credits", idp.token(claims(iss="https://evil.test/")),
                         "wrong_issuer"),
        "wrong audience": ("/v1/credits", idp.token(claims(aud="another-app")),
                           "wrong_audience"),
        "tampered payload": ("/v1/credits", f"{header}.{forged_payload}.{signature}",
                             "bad_signature"),
        "no sub": ("/v1/credits", idp.token({k: v for k, v in claims().items() if k != "sub"}),
                   "invalid_claims"),
        "no exp": ("/v1/credits", idp.token({k: v for k, v in claims().items() if k != "exp"}),
                   "invalid_claims"),
        "ES256 header on an RSA key": (
            "/v1/credits",
            _raw_token({"alg": "ES256", "kid": key.kid}, claims(), b"x" * 64),
            "algorithm_not_allowed"),
        "admin route": ("/v1/admin/users", valid, "not_admin"),
    }


REFUSALS = ["alg none", "HS256 with the RSA public key", "expired", "not yet valid",
            "wrong issuer", "wrong audience", "tampered payload", "no sub", "no exp",
            "ES256 header on an RSA key", "admin route"]


@pytest.mark.parametrize("name", REFUSALS)
async def test_bad_tokens_are_401_invalid_token_and_write_nothing(
    api: Api, idp: FakeIdentityProvider, name: str
) -> None:
    path, token, reason = _refusals(idp)[name]
    users = await _count(api.pool, "users")
    if path == "/v1/admin/users":
        r = await api.client.post(path, json={"email": f"{uuid.uuid4().hex}@example.com"},
                                  headers=bearer(token))
    else:
        r = await api.client.get(path, headers=bearer(token))
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    error = r.json()["error"]
    assert error["code"] == "invalid_token"
    assert error["details"] == {"reason": reason}
    assert "BEGIN PUBLIC KEY" not in r.text and idp.key.kid not in error["message"]
    assert await _count(api.pool, "users") == users
    assert await _count(api.pool, "user_identities") == 0


async def test_clock_skew_within_the_leeway_is_accepted(
    api: Api, idp: FakeIdentityProvider
) -> None:
    now = int(time.time())
    for skewed in (claims(iat=now - 3600, exp=now - 10), claims(nbf=now + 10)):
        r = await api.client.get("/v1/credits", headers=bearer(idp.token(skewed)))
        assert r.status_code == 200, r.text


async def test_fifty_concurrent_first_requests_make_one_user_and_one_grant(
    api: Api, idp: FakeIdentityProvider
) -> None:
    sub = str(uuid.uuid4())
    await api.client.get("/v1/models", headers=bearer(idp.token(claims())))  # JWKS fetched
    users = await _count(api.pool, "users")
    tokens = [idp.token(claims(sub, email="racer@example.com", jti=str(i))) for i in range(50)]
    answers = await asyncio.gather(
        *(api.client.get("/v1/credits", headers=bearer(t)) for t in tokens))
    assert [r.status_code for r in answers] == [200] * 50
    assert {r.json()["balance"] for r in answers} == {STARTING_CREDITS}
    assert await _count(api.pool, "users") == users + 1
    user_ids = await api.pool.fetch(
        "SELECT user_id FROM user_identities WHERE issuer = $1 AND subject = $2", ISSUER, sub)
    assert len(user_ids) == 1
    grants = await api.pool.fetch(
        "SELECT amount FROM credit_ledger WHERE user_id = $1", user_ids[0]["user_id"])
    assert [g["amount"] for g in grants] == [STARTING_CREDITS]
    me = await api.client.get("/v1/me", headers=bearer(tokens[0]))
    assert me.json()["id"] == str(user_ids[0]["user_id"])


async def test_a_jwt_user_and_an_api_key_user_never_see_each_others_things(
    api: Api, idp: FakeIdentityProvider
) -> None:
    jwt_user = bearer(idp.token(claims()))
    key_user = (await api.user(credits=10)).headers
    ctx = api.app.state.genq
    assert isinstance(ctx, ApiContext)
    owned: dict[str, tuple[str, str]] = {}
    for name, headers in (("jwt", jwt_user), ("key", key_user)):
        r = await api.client.post("/v1/jobs", json=JOB, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        me = (await api.client.get("/v1/me", headers=headers)).json()
        key = asset_key(uuid.UUID(me["id"]), uuid.UUID(job_id), 0, "png")
        await ctx.storage.put_bytes(key, b"\x89PNG\r\n\x1a\n", content_type="image/png")
        asset_id = await api.pool.fetchval(
            "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, "
            "storage_key, file_size_bytes, mime_type) "
            "VALUES ($1, $2, 0, 'image', $3, 8, 'image/png') RETURNING id",
            uuid.UUID(me["id"]), uuid.UUID(job_id), key)
        owned[name] = (job_id, str(asset_id))
        mine = await api.client.get(f"/v1/assets/{asset_id}", headers=headers)
        assert mine.status_code == 200, mine.text
    for viewer, other in (("jwt", "key"), ("key", "jwt")):
        headers = jwt_user if viewer == "jwt" else key_user
        job_id, asset_id = owned[other]
        for method, path, code in (
            ("GET", f"/v1/jobs/{job_id}", "job_not_found"),
            ("POST", f"/v1/jobs/{job_id}/cancel", "job_not_found"),
            ("GET", f"/v1/assets/{asset_id}", "asset_not_found"),
            ("GET", f"/v1/assets/{asset_id}/content", "asset_not_found"),
        ):
            r = await api.client.request(method, path, headers=headers)
            assert r.status_code == 404, (viewer, method, path, r.text)
            assert r.json()["error"]["code"] == code
        jobs = (await api.client.get("/v1/jobs", headers=headers)).json()["data"]
        assert [j["id"] for j in jobs] == [owned[viewer][0]]
        assets = (await api.client.get("/v1/assets", headers=headers)).json()["data"]
        assert [a["id"] for a in assets] == [owned[viewer][1]]
    # Each other's cancel changed nothing.
    for name, headers in (("jwt", jwt_user), ("key", key_user)):
        job = await api.client.get(f"/v1/jobs/{owned[name][0]}", headers=headers)
        assert job.json()["status"] == "queued"


async def test_the_shared_secret_signs_users_in_and_refuses_other_algorithms(
    settings: Settings, pool: Pool, idp: FakeIdentityProvider
) -> None:
    configured = jwt_settings(settings, jwt_secret=SecretStr(SECRET))
    async with running_app(configured) as (_, client):
        sub = str(uuid.uuid4())
        token = _hs256(claims(sub), SECRET.encode())
        me = await client.get("/v1/me", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["identities"][0]["subject"] == sub
        wrong_secret = _hs256(claims(sub), b"another-secret-of-at-least-32-characters!")
        rsa_signed = idp.token(claims(sub))  # no JWKS configured: RS256 is not accepted
        for bad, reason in ((wrong_secret, "bad_signature"),
                            (rsa_signed, "algorithm_not_allowed")):
            r = await client.get("/v1/me", headers=bearer(bad))
            assert r.status_code == 401
            assert r.json()["error"] == {"code": "invalid_token", "message": r.json()["error"][
                "message"], "details": {"reason": reason}}
        # API keys keep working beside tokens.
        made = await client.post("/v1/admin/users", json={"email": "keys@example.com"},
                                 headers=ADMIN)
        key_me = await client.get("/v1/me", headers=bearer(made.json()["api_key"]))
        assert key_me.status_code == 200
        assert key_me.json() == {**key_me.json(), "email": "keys@example.com", "identities": []}


async def test_without_jwt_settings_a_token_is_just_an_invalid_key(
    settings: Settings, pool: Pool, idp: FakeIdentityProvider
) -> None:
    async with running_app(settings) as (_, client):
        r = await client.get("/v1/me", headers=bearer(idp.token(claims())))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert idp.fetches == 0


async def test_an_unreachable_jwks_is_503_not_401(
    settings: Settings, pool: Pool, idp: FakeIdentityProvider
) -> None:
    token = idp.token(claims())
    idp.stop()
    configured = jwt_settings(settings, jwt_jwks_url=idp.jwks_url)
    async with running_app(configured) as (_, client):
        r = await client.get("/v1/me", headers=bearer(token))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "service_unavailable"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_jwks_is_kept_for_its_cache_time_and_unknown_kids_wait_for_the_interval(
    idp: FakeIdentityProvider
) -> None:
    clock = Clock()
    cache = JwksCache(idp.jwks_url, cache_s=600, refetch_s=30, clock=clock)
    first = idp.key
    assert (await cache.key(first.kid)) is not None
    assert idp.fetches == 1
    assert await cache.key("made-up") is None  # the first unknown kid refetches
    assert idp.fetches == 2
    newer = idp.rotate()
    clock.now += 29
    assert await cache.key(newer.kid) is None  # within the interval: refused, no fetch
    assert idp.fetches == 2
    clock.now += 1
    assert (await cache.key(newer.kid)) is not None  # the interval has passed
    assert idp.fetches == 3
    clock.now += 600  # the cache time has passed: fetched again on next use
    assert (await cache.key(first.kid)) is not None
    assert idp.fetches == 4
    idp.stop()  # the provider goes away: the keys held are kept
    clock.now += 600
    assert (await cache.key(first.kid)) is not None
    assert cache.fetches == 5  # tried, and failed
    clock.now += 29  # not tried again on every request, only after the refetch interval
    assert (await cache.key(first.kid)) is not None
    assert cache.fetches == 5
    clock.now += 1
    assert (await cache.key(first.kid)) is not None
    assert cache.fetches == 6
    assert idp.fetches == 4


async def test_a_lone_key_verifies_a_token_without_kid(
    api: Api, idp: FakeIdentityProvider
) -> None:
    token = jwt.encode(claims(), idp.key.private, algorithm="RS256")
    r = await api.client.get("/v1/credits", headers=bearer(token))
    assert r.status_code == 200, r.text
    idp.rotate()  # two keys published: a token must say which
    other = jwt.encode(claims(), idp.key.private, algorithm="RS256")
    r = await api.client.get("/v1/credits", headers=bearer(other))
    assert r.status_code == 401
    assert r.json()["error"]["details"] == {"reason": "bad_signature"}


async def test_an_api_key_of_a_signed_in_user_is_the_same_user(
    api: Api, idp: FakeIdentityProvider
) -> None:
    token = bearer(idp.token(claims(email="both@example.com")))
    me = (await api.client.get("/v1/me", headers=token)).json()
    api_key = new_api_key()  # as an admin issues one for this user
    await api.pool.execute(queries["create_api_key"], uuid.UUID(me["id"]), api_key[:10],
                           hash_api_key(api_key))
    by_key = await api.client.get("/v1/me", headers=bearer(api_key))
    assert by_key.status_code == 200
    assert by_key.json() == me
    job = await api.client.post("/v1/jobs", json=JOB, headers=bearer(api_key))
    assert job.status_code == 202, job.text
    seen = await api.client.get(f"/v1/jobs/{job.json()['id']}", headers=token)
    assert seen.status_code == 200
    credits = (await api.client.get("/v1/credits", headers=token)).json()
    assert credits == {"balance": STARTING_CREDITS - 6, "reserved": 6}


async def test_a_disabled_signed_in_user_is_refused_and_enabled_again(
    api: Api, idp: FakeIdentityProvider
) -> None:
    token = bearer(idp.token(claims(email="paused@example.com")))
    me = (await api.client.get("/v1/me", headers=token)).json()
    # The identity is cached now; disabling drops it.
    disabled = await api.client.post(f"/v1/admin/users/{me['id']}/disable", headers=ADMIN)
    assert disabled.status_code == 200, disabled.text
    refused = await api.client.get("/v1/me", headers=token)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_disabled")
    # A new session of the same subject is the same (disabled) user, not a new one.
    fresh = bearer(idp.token(claims(me["identities"][0]["subject"])))
    assert (await api.client.get("/v1/me", headers=fresh)).status_code == 403
    assert await _count(api.pool, "users") == 1
    await api.client.post(f"/v1/admin/users/{me['id']}/enable", headers=ADMIN)
    assert (await api.client.get("/v1/me", headers=token)).json()["id"] == me["id"]
