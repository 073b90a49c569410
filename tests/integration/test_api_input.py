"""Hostile and malformed input: every bad request is a 4xx in the JSON error shape, never a 500,
and writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.factories import add_models
from tests.integration.api_support import (  # noqa: F401
    ADMIN,
    Api,
    User,
    api_fixture,
    running_app,
)

GOOD = {"model": "local/sketch", "prompt": "a cat", "num_outputs": 1}
JSON_HEADERS = {"Content-Type": "application/json"}


def _with(**changes: Any) -> dict[str, Any]:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

INVALID_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", _with(colour="red"), "colour"),
    ("model missing", _with(model=_DROP), "model"),
    ("model unknown", _with(model="nope/none"), "model"),
    ("model not a string", _with(model=7), "model"),
    ("prompt missing", _with(prompt=_DROP), "prompt"),
    ("prompt empty", _with(prompt=""), "prompt"),
    ("prompt blank", _with(prompt=" \n\t "), "prompt"),
    ("prompt too long", _with(prompt="x" * 4001), "prompt"),
    ("prompt with NUL", _with(prompt="a\x00b"), "prompt"),
    ("prompt not a string", _with(prompt=["a"]), "prompt"),
    ("num_outputs zero", _with(num_outputs=0), "num_outputs"),
    ("num_outputs negative", _with(num_outputs=-3), "num_outputs"),
    ("num_outputs over the model's max", _with(num_outputs=9), "num_outputs"),
    ("num_outputs huge", _with(num_outputs=10**40), "num_outputs"),
    ("num_outputs float", _with(num_outputs=1.5), "num_outputs"),
    ("num_outputs fractional", _with(num_outputs=2.5), "num_outputs"),
    ("num_outputs string", _with(num_outputs="2"), "num_outputs"),
    ("num_outputs bool", _with(num_outputs=True), "num_outputs"),
    ("params a list", _with(params=[1, 2]), "params"),
    ("params a string", _with(params="{}"), "params"),
    ("params too large", _with(params={"k": "v" * 9000}), "params"),
    ("params nested too deep", _with(params=json.loads('{"a":' * 40 + "1" + "}" * 40)),
     "params"),
    ("params key with NUL", _with(params={"a\x00": 1}), "params"),
    ("params value with NUL", _with(params={"a": ["\x00"]}), "params"),
    ("seed negative", _with(seed=-1), "seed"),
    ("seed too big", _with(seed=2**63), "seed"),
    ("seed huge", _with(seed=10**100), "seed"),
    ("seed fractional", _with(seed=1.5), "seed"),
    ("seed string", _with(seed="7"), "seed"),
    ("seed bool", _with(seed=False), "seed"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID_FIELDS,
                         ids=[c[0] for c in INVALID_FIELDS])
async def test_each_bad_field_is_422(api: Api, case: str, body: dict[str, Any],
                                     field: str) -> None:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", json=body, headers=user.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [d["field"].split(".")[0] for d in error["details"]], error
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0
    assert await api.balance(user) == (100, 0)


RAW_BODIES: list[tuple[str, bytes, int, str]] = [
    ("truncated", b'{"model": "local/sketch"', 400, "invalid_json"),
    ("syntax", b'{"model": }', 400, "invalid_json"),
    ("empty", b"", 400, "invalid_json"),
    ("NaN", b'{"model": "local/sketch", "prompt": "a", "seed": NaN}', 400, "invalid_json"),
    ("Infinity", b'{"model": "local/sketch", "prompt": "a", "params": {"x": -Infinity}}',
     400, "invalid_json"),
    ("not UTF-8", b'{"model": "local/sketch", "prompt": "\xff\xfe"}', 400, "invalid_json"),
    ("deep nesting", b"[" * 30000 + b"]" * 30000, 400, "invalid_json"),
    ("5000-digit integer", b'{"model": "local/sketch", "prompt": "a", "seed": '
     + b"9" * 5000 + b"}", 400, "invalid_json"),
    ("array body", b"[1, 2]", 422, "validation_error"),
    ("string body", b'"hello"', 422, "validation_error"),
    ("null body", b"null", 422, "validation_error"),
    ("lone surrogate", b'{"model": "local/sketch", "prompt": "a\\ud800b"}',
     422, "validation_error"),
    ("escaped NUL", b'{"model": "local/sketch", "prompt": "a\\u0000b"}',
     422, "validation_error"),
    ("overflowing float", b'{"model": "local/sketch", "prompt": "a", "params": {"x": 1e999}}',
     422, "validation_error"),
    ("junk nested in params", b'{"model": "local/sketch", "prompt": "a", "params": '
     b'{"a": [{"b": [null, true, {"\\ud83d": 1}]}]}}', 422, "validation_error"),
    ("wrong types everywhere", b'{"model": ["local/sketch"], "prompt": {"x": 1}, '
     b'"num_outputs": null, "seed": []}', 422, "validation_error"),
]


@pytest.mark.parametrize(("case", "raw", "status", "code"), RAW_BODIES,
                         ids=[c[0] for c in RAW_BODIES])
async def test_malformed_bodies_are_4xx(api: Api, case: str, raw: bytes, status: int,
                                        code: str) -> None:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", content=raw, headers={**user.headers, **JSON_HEADERS})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert set(r.json()["error"]) == {"code", "message", "details"}
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


async def test_disabled_model_is_422(api: Api) -> None:
    user = await api.user(credits=100)
    await api.pool.execute("UPDATE models SET enabled = false WHERE key = 'local/sketch'")
    r = await api.client.post("/v1/jobs", json=GOOD, headers=user.headers)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "model"
    models = (await api.client.get("/v1/models", headers=user.headers)).json()["data"]
    assert "local/sketch" not in [m["key"] for m in models]


async def test_huge_bodies_are_413(api: Api) -> None:
    user = await api.user(credits=100)
    limit = api.settings.max_body_bytes
    huge = json.dumps(_with(prompt="x" * (limit + 10))).encode()
    r = await api.client.post("/v1/jobs", content=huge, headers={**user.headers, **JSON_HEADERS})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the cap must hold while streaming.
        for _ in range(limit // 1024 + 10):
            yield b" " * 1024

    r = await api.client.post("/v1/jobs", content=chunks(),
                              headers={**user.headers, **JSON_HEADERS})
    assert r.status_code == 413
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "multipart/form-data"])
async def test_wrong_content_type_is_415(api: Api, content_type: str | None) -> None:
    user = await api.user(credits=100)
    headers = dict(user.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = await api.client.post("/v1/jobs", content=json.dumps(GOOD).encode(), headers=headers)
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"


async def test_json_content_type_with_charset_is_fine(api: Api) -> None:
    user = await api.user(credits=100)
    r = await api.client.post(
        "/v1/jobs", content=json.dumps(GOOD).encode(),
        headers={**user.headers, "Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 202


# A model whose operator lets any params through (params_schema allows unknown keys).
OPEN_MODEL = """
[[models]]
key = "test/open"
provider = "local"
ref = "sketch"
media_type = "image"
price_per_output = 1
max_outputs = 2
timeout_s = 60
params_schema = { additionalProperties = true }
"""


async def test_unicode_round_trips(api: Api) -> None:
    await add_models(api.pool, OPEN_MODEL)
    user = await api.user(credits=100)
    prompt = "一只猫 🐈‍⬛ — קֶצֶב — naïve café \u200d"
    params = {"négatif": "ü", "emoji": ["🎨", {"nested": "ß"}], "big": 10**30, "neg": -5}
    async with running_app(api.settings) as (_, client):  # loads the catalog with test/open
        r = await client.post(
            "/v1/jobs", json=_with(model="test/open", prompt=prompt, params=params),
            headers=user.headers,
        )
        assert r.status_code == 202, r.text
        got = (await client.get(f"/v1/jobs/{r.json()['id']}", headers=user.headers)).json()
    assert got["prompt"] == prompt
    assert {k: got["params"][k] for k in params} == params


async def _unauthorized(api: Api, method: str, path: str, headers: dict[str, str]) -> None:
    r = await api.client.request(method, path, headers=headers, json=GOOD)
    assert r.status_code == 401, (method, path, headers, r.text)
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


USER_ROUTES = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"),
               ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
               ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"),
               ("GET", "/v1/credits"), ("GET", "/v1/credits/ledger"), ("GET", "/v1/models"),
               ("GET", "/v1/assets"), ("GET", "/v1/assets/00000000-0000-0000-0000-000000000000"),
               ("GET", "/v1/assets/00000000-0000-0000-0000-000000000000/content")]


async def test_missing_or_wrong_credentials_are_401(api: Api) -> None:
    user = await api.user(credits=100)
    bad_headers: list[dict[str, str]] = [
        {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
        {"Authorization": f"Basic {user.api_key}"}, {"Authorization": user.api_key},
        {"Authorization": "Bearer gq_not-a-real-key"},
        {"Authorization": "Bearer " + "k" * 10_000},
        ADMIN,  # the admin token is not a user key
    ]
    for method, path in USER_ROUTES:
        for headers in bad_headers:
            await _unauthorized(api, method, path, headers)
    # A user's key does not open the admin endpoints.
    for path in ("/v1/admin/users", f"/v1/admin/users/{user.id}/credits"):
        await _unauthorized(api, "POST", path, user.headers)
        await _unauthorized(api, "POST", path, {"Authorization": "Bearer wrong-admin-token"})
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0


async def test_revoked_key_is_401(api: Api) -> None:
    user = await api.user(credits=100)
    await api.pool.execute("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1", user.id)
    await _unauthorized(api, "GET", "/v1/credits", user.headers)


async def test_admin_endpoints_without_admin_token_are_403(api: Api) -> None:
    settings = api.settings.model_copy(update={"admin_token": None})
    async with running_app(settings) as (_, client):
        r = await client.post("/v1/admin/users", json={"email": "a@example.com"}, headers=ADMIN)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "admin_disabled"
    assert await api.pool.fetchval("SELECT count(*) FROM users") == 0


async def test_admin_input_is_validated(api: Api) -> None:
    user: User = await api.user()
    cases: list[tuple[str, Any, int, str]] = [
        ("/v1/admin/users", {"email": "no-at-sign"}, 422, "validation_error"),
        ("/v1/admin/users", {"email": "a@b.c", "admin": True}, 422, "validation_error"),
        (f"/v1/admin/users/{user.id}/credits", {"amount": 0}, 422, "validation_error"),
        # Taking back more than the balance holds (it holds 0).
        (f"/v1/admin/users/{user.id}/credits", {"amount": -5}, 402, "insufficient_credits"),
        (f"/v1/admin/users/{user.id}/credits", {"amount": 2**63}, 422, "validation_error"),
        (f"/v1/admin/users/{user.id}/credits", {"amount": "5"}, 422, "validation_error"),
        (f"/v1/admin/users/{user.id}/credits", {"amount": 5.5}, 422, "validation_error"),
        ("/v1/admin/users/00000000-0000-0000-0000-000000000000/credits", {"amount": 5},
         404, "user_not_found"),
        ("/v1/admin/users/not-a-uuid/credits", {"amount": 5}, 404, "user_not_found"),
    ]
    for path, body, status, code in cases:
        r = await api.client.post(path, json=body, headers=ADMIN)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, body, r.text)
    email = f"{user.id}@example.com"
    assert (await api.client.post("/v1/admin/users", json={"email": email}, headers=ADMIN)
            ).status_code == 201
    dup = await api.client.post("/v1/admin/users", json={"email": email.upper()}, headers=ADMIN)
    assert (dup.status_code, dup.json()["error"]["code"]) == (409, "email_taken")
    assert await api.balance(user) == (0, 0)
