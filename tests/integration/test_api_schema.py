"""The OpenAPI document and the server agree: integer fields take what JSON Schema counts as an
integer (``3.0``), and every status an operation answers with is one it documents."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401

JSON = {"Content-Type": "application/json"}


async def _document(api: Api) -> dict[str, Any]:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


async def test_integral_floats_are_integers_in_every_body(api: Api) -> None:
    user = await api.user(credits=10)
    r = await api.client.post(
        "/v1/jobs", content=b'{"model": "local/sketch", "prompt": "p", "num_outputs": 2.0, '
                            b'"seed": 42.0}',
        headers={**user.headers, **JSON, "Idempotency-Key": "floaty"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["num_outputs"], job["seed"]) == (2, 42)
    assert b'"num_outputs":2,' in r.content and b'"seed":42,' in r.content
    assert await api.balance(user) == (10 - job["cost"]["reserved"], job["cost"]["reserved"])
    # The same request written with integers is a replay of it, not a new job.
    again = await api.client.post(
        "/v1/jobs", json={"model": "local/sketch", "prompt": "p", "num_outputs": 2, "seed": 42},
        headers={**user.headers, "Idempotency-Key": "floaty"})
    assert again.status_code == 202 and again.json()["id"] == job["id"], again.text
    assert again.headers["Idempotent-Replayed"] == "true"

    g = await api.client.post(f"/v1/admin/users/{user.id}/credits", content=b'{"amount": 5.0}',
                              headers={**ADMIN, **JSON})
    assert g.status_code == 200, g.text
    assert g.json()["entry"]["amount"] == 5 and b'"amount":5,' in g.content


@pytest.mark.parametrize(("field", "value"), [
    ("num_outputs", "2.5"), ("num_outputs", "true"), ("num_outputs", '"2"'),
    ("num_outputs", "0.0"), ("num_outputs", "1e400"), ("num_outputs", "1e300"),
    ("seed", "-1.0"), ("seed", "0.5"), ("seed", "false"), ("seed", "1e19"),
])
async def test_other_numbers_are_still_refused_in_a_job(api: Api, field: str, value: str) -> None:
    user = await api.user(credits=10)
    body = {"model": "local/sketch", "prompt": "p"}
    raw = json.dumps(body)[:-1] + f', "{field}": {value}}}'
    r = await api.client.post("/v1/jobs", content=raw.encode(), headers={**user.headers, **JSON})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert [d["field"] for d in r.json()["error"]["details"]] == [field]
    assert await api.balance(user) == (10, 0)


# (A negative amount takes credits back: "-1.0" is -1, valid; below -10^15 it is not.)
@pytest.mark.parametrize("value", ["5.5", "true", '"5"', "0.0", "1e16", "-1e16", "-0.5"])
async def test_other_numbers_are_still_refused_in_a_grant(api: Api, value: str) -> None:
    user = await api.user(credits=1)
    r = await api.client.post(f"/v1/admin/users/{user.id}/credits",
                              content=f'{{"amount": {value}}}'.encode(), headers={**ADMIN, **JSON})
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == ["amount"]
    assert await api.balance(user) == (1, 0)


def _bad_bodies(max_bytes: int) -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        ("malformed", b"{not json", JSON),
        ("empty", b"", JSON),
        ("not json media type", b"{}", {"Content-Type": "text/plain"}),
        ("no media type", b"{}", {}),
        ("too large", b'{"x": "' + b"x" * max_bytes + b'"}', JSON),
        ("invalid", b'{"unknown": 1}', JSON),
    ]


async def test_every_status_of_a_body_operation_is_documented(api: Api) -> None:
    document = await _document(api)
    user = await api.user(credits=1)
    target = await api.user()
    operations = [
        ("post", "/v1/jobs", "/v1/jobs", user.headers),
        ("post", "/v1/admin/users", "/v1/admin/users", ADMIN),
        ("post", "/v1/admin/users/{user_id}/credits", f"/v1/admin/users/{target.id}/credits",
         ADMIN),
    ]
    for method, template, path, auth in operations:
        documented = document["paths"][template][method]["responses"]
        seen = set()
        for case, body, headers in _bad_bodies(api.settings.max_body_bytes):
            r = await api.client.request(method, path, content=body, headers={**auth, **headers})
            assert 400 <= r.status_code < 500, (template, case, r.text)
            assert set(r.json()) == {"error"}
            seen.add(r.status_code)
            assert str(r.status_code) in documented, (template, case, r.status_code)
            assert documented[str(r.status_code)]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
        assert seen == {400, 413, 415, 422}, template
        for status in ("401", "503"):
            assert status in documented, (template, status)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/assets", "/v1/credits/ledger", "/v1/models"])
async def test_a_bad_query_status_is_documented(api: Api, path: str) -> None:
    document = await _document(api)
    user = await api.user()
    r = await api.client.get(f"{path}?unknown=1", headers=user.headers)
    assert r.status_code == 422
    assert "422" in document["paths"][path]["get"]["responses"]


async def test_query_parameters_are_documented_as_non_empty(api: Api) -> None:
    document = await _document(api)
    for path in ("/v1/jobs", "/v1/assets", "/v1/credits/ledger"):
        params = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        assert params["limit"]["schema"]["type"] == "integer"
        assert params["limit"]["schema"]["minimum"] == 1
        assert params["cursor"]["schema"]["minLength"] == 1
        assert all(p["in"] == "query" for p in params.values())


@pytest.mark.parametrize(("local", "accepted"), [
    ("ada", True), ("é", True), ("\U0001f60d", True),
    ("a\x00", False), ("a\x01", False), ("a b", False), ("a\x85", False), ("a\xa0", False),
    ("a\u2009", False), ("a\u3000", False), ("a\ufeff", False),
])
async def test_email_pattern_and_server_agree(api: Api, local: str, accepted: bool) -> None:
    document = await _document(api)
    pattern = document["components"]["schemas"]["UserCreate"]["properties"]["email"]["pattern"]
    # "\s" means different characters in ECMA-262 (JSON Schema) and in the server's regex
    # engine (U+0085, U+FEFF), so the pattern lists code points instead.
    assert "\\s" not in pattern
    email = f"{local}@example.com"
    assert (re.search(pattern, email) is not None) is accepted
    r = await api.client.post("/v1/admin/users", json={"email": email}, headers=ADMIN)
    assert r.status_code == (201 if accepted else 422), r.text
