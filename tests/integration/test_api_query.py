"""Query strings of the list endpoints: only the documented parameters, each at most once, none
empty, every value typed; anything else is a 422 naming the parameter, never a 500 and never
silently ignored."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from tests.integration.api_support import Api, api_fixture  # noqa: F401

PAGED = ("/v1/jobs", "/v1/assets", "/v1/credits/ledger")
TIME_PAGED = ("/v1/jobs", "/v1/assets")
LISTS = (*PAGED, "/v1/models")


def _forged(payload: list[str]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _assert_422_naming(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error", error
    assert isinstance(error["message"], str) and error["message"]
    assert [d["field"] for d in error["details"]] == [field], error


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("digit", ["²", "①", "٣", "\uff13", "1²"])
async def test_non_ascii_digits_in_limit_are_422(api: Api, path: str, digit: str) -> None:
    user = await api.user()
    r = await api.client.get(path, params={"limit": digit}, headers=user.headers)
    _assert_422_naming(r, "limit")


@pytest.mark.parametrize("path", PAGED)
async def test_limit_takes_any_ascii_integer_from_one(api: Api, path: str) -> None:
    user = await api.user(credits=3)
    rows = 1 if path == "/v1/credits/ledger" else 0  # the grant
    for raw in ("1", "007", "100", "101", "99999999999", "9" * 400):
        r = await api.client.get(path, params={"limit": raw}, headers=user.headers)
        assert r.status_code == 200, (raw, r.text)
        assert len(r.json()["data"]) == rows
    for raw in ("0", "000", "-1", "+1", "1.5", " 5", "1e3", "abc"):
        r = await api.client.get(path, params={"limit": raw}, headers=user.headers)
        _assert_422_naming(r, "limit")


@pytest.mark.parametrize("path", TIME_PAGED)
@pytest.mark.parametrize("when", [
    "0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999-23:59", "9999-12-31T23:59:59.999999+23:59",
    "2026-01-01T00:00:00+01:00",
])
async def test_forged_cursor_with_extreme_offset_is_422(api: Api, path: str, when: str) -> None:
    user = await api.user()
    cursor = _forged([when, str(uuid.uuid4())])
    r = await api.client.get(path, params={"cursor": cursor}, headers=user.headers)
    _assert_422_naming(r, "cursor")


@pytest.mark.parametrize("path", TIME_PAGED)
async def test_cursor_at_the_ends_of_time_in_utc_is_fine(api: Api, path: str) -> None:
    user = await api.user()
    for when in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"):
        cursor = _forged([when, str(uuid.uuid4())])
        r = await api.client.get(path, params={"cursor": cursor}, headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/jobs", "limit"), ("/v1/jobs", "cursor"), ("/v1/jobs", "status"),
    ("/v1/assets", "limit"), ("/v1/assets", "cursor"), ("/v1/assets", "job_id"),
    ("/v1/credits/ledger", "limit"), ("/v1/credits/ledger", "cursor"),
])
async def test_empty_and_repeated_parameters_are_422(api: Api, path: str, name: str) -> None:
    user = await api.user()
    for query in (f"{name}=", name, f"{name}=&{name}="):
        r = await api.client.get(f"{path}?{query}", headers=user.headers)
        _assert_422_naming(r, name)
    valid = {"limit": "5", "cursor": None, "status": "queued", "job_id": str(uuid.uuid4())}
    value = valid[name]
    if value is not None:
        r = await api.client.get(f"{path}?{name}={value}&{name}={value}", headers=user.headers)
        _assert_422_naming(r, name)
        assert (await api.client.get(f"{path}?{name}={value}", headers=user.headers)
                ).status_code == 200


@pytest.mark.parametrize("path", LISTS)
async def test_unknown_parameters_are_422(api: Api, path: str) -> None:
    user = await api.user()
    for query in ("model=x", "Limit=5", "limit[]=5", "page=2", "=x"):
        r = await api.client.get(f"{path}?{query}", headers=user.headers)
        _assert_422_naming(r, query.split("=")[0])


async def test_a_filter_is_not_silently_dropped(api: Api) -> None:
    user = await api.user(credits=10)
    submitted = await api.client.post(
        "/v1/jobs", json={"model": "local/sketch", "prompt": "p"}, headers=user.headers)
    assert submitted.status_code == 202, submitted.text
    everything = await api.client.get("/v1/jobs", headers=user.headers)
    assert [j["id"] for j in everything.json()["data"]] == [submitted.json()["id"]]
    r = await api.client.get("/v1/jobs?model=some/other", headers=user.headers)
    _assert_422_naming(r, "model")
    r = await api.client.get("/v1/jobs?status=done", headers=user.headers)
    _assert_422_naming(r, "status")
    r = await api.client.get("/v1/assets?job_id=not-a-uuid", headers=user.headers)
    _assert_422_naming(r, "job_id")


async def test_every_problem_of_a_query_is_named(api: Api) -> None:
    user = await api.user()
    r = await api.client.get("/v1/jobs?sort=asc&limit=1&limit=2&cursor=", headers=user.headers)
    assert r.status_code == 422
    fields = sorted(d["field"] for d in r.json()["error"]["details"])
    assert fields == ["cursor", "limit", "sort"]
