"""Params at the intake: each model's schema is checked before anything is reserved, and the
price reserved is the one the params imply."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.factories import add_models, assert_invariants, ledger_kinds
from tests.integration.api_support import Api, User, api_fixture, running_app  # noqa: F401

SKETCH = {"model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 2}


async def _nothing_written(api: Api, user: User) -> None:
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM credit_reservations") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await ledger_kinds(api.pool, user.id) == [("grant", 100, 0)]
    assert await api.balance(user) == (100, 0)


async def test_unknown_params_are_refused_by_name(api: Api) -> None:
    user = await api.user(credits=100)
    r = await api.client.post(
        "/v1/jobs", headers={**user.headers, "Idempotency-Key": "k1"},
        json={**SKETCH, "params": {"width": 512, "steps": 50, "disable_safety_checker": True}},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "validation_error", "message": "invalid params",
        "details": [
            {"field": "params.disable_safety_checker",
             "message": "is not an accepted parameter of this model"},
            {"field": "params.steps", "message": "is not an accepted parameter of this model"},
        ],
    }
    await _nothing_written(api, user)


BAD_VALUES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("width a string", {"width": "abc"}, {"params.width": "must be of type integer"}),
    ("width null", {"width": None}, {"params.width": "must be of type integer"}),
    ("width a float", {"width": 256.5}, {"params.width": "must be of type integer"}),
    ("width a bool", {"width": True}, {"params.width": "must be of type integer"}),
    ("width zero", {"width": 0}, {"params.width": "must be at least 1"}),
    ("width 4096", {"width": 4096}, {"params.width": "must be at most 2048"}),
    ("width huge", {"width": 10**40}, {"params.width": "must be at most 2048"}),
    ("height negative", {"height": -256}, {"params.height": "must be at least 1"}),
    ("format not in the enum", {"format": "gif"},
     {"params.format": 'must be one of "png", "webp"'}),
    ("several at once", {"width": 4096, "height": "x", "format": None},
     {"params.width": "must be at most 2048", "params.height": "must be of type integer",
      "params.format": 'must be one of "png", "webp"'}),
]


@pytest.mark.parametrize(("case", "params", "expected"), BAD_VALUES,
                         ids=[c[0] for c in BAD_VALUES])
async def test_bad_param_values_are_422_naming_each_field(
    api: Api, case: str, params: dict[str, Any], expected: dict[str, str]
) -> None:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", json={**SKETCH, "params": params},
                              headers=user.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert {d["field"]: d["message"] for d in error["details"]} == expected
    await _nothing_written(api, user)


@pytest.mark.parametrize(
    ("params", "price", "reserved"),
    [({}, 1, 2), ({"width": 256, "height": 256}, 1, 2), ({"width": 1024, "height": 1024}, 2, 4),
     ({"width": 2048, "height": 2048}, 8, 16), ({"width": 2048, "height": 1, "format": "webp"},
                                                1, 2)],
)
async def test_the_price_reserved_is_the_one_the_params_imply(
    api: Api, params: dict[str, Any], price: int, reserved: int
) -> None:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", json={**SKETCH, "params": params},
                              headers=user.headers)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["cost"] == {"price_per_output": price, "reserved": reserved, "captured": 0,
                           "refunded": 0}
    assert await api.balance(user) == (100 - reserved, reserved)
    assert await ledger_kinds(api.pool, user.id) == [
        ("grant", 100, 0), ("reserve", -reserved, reserved)]
    row = await api.pool.fetchrow("SELECT price_per_output, params FROM generation_jobs "
                                  "WHERE id = $1", uuid.UUID(job["id"]))
    assert row is not None
    assert row["price_per_output"] == price
    assert row["params"] == {"width": 256, "height": 256, "format": "png", **params}
    await assert_invariants(api.pool, user.id)


async def test_a_short_balance_for_the_tier_price_is_402(api: Api) -> None:
    user = await api.user(credits=10)
    r = await api.client.post(
        "/v1/jobs", headers=user.headers,
        json={**SKETCH, "params": {"width": 2048, "height": 2048}},
    )
    assert r.status_code == 402, r.text
    assert r.json()["error"]["details"] == {"price": 16, "balance": 10}
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0
    assert await api.balance(user) == (10, 0)


async def test_models_publish_their_schema_and_tiers(api: Api) -> None:
    user = await api.user()
    r = await api.client.get("/v1/models", headers=user.headers)
    assert r.status_code == 200
    sketch = {m["key"]: m for m in r.json()["data"]}["local/sketch"]
    assert sketch["price_per_output"] == 1
    assert sketch["price_tiers"] == [
        {"above_megapixels": 0.3, "price_per_output": 2},
        {"above_megapixels": 1.1, "price_per_output": 4},
        {"above_megapixels": 2.2, "price_per_output": 8},
    ]
    schema = sketch["params_schema"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["width"] == {"type": "integer", "minimum": 1, "maximum": 2048,
                                             "description": "Pixels."}
    assert schema["properties"]["format"]["enum"] == ["png", "webp"]


REPLICATE_MODELS = """
[[models]]
key = "replicate/flux"
provider = "replicate"
ref = "acme/flux"
media_type = "image"
price_per_output = 3
max_outputs = 4
timeout_s = 60
params = { aspect_ratio = "1:1" }

[[models]]
key = "replicate/open"
provider = "replicate"
ref = "acme/open"
media_type = "image"
price_per_output = 2
max_outputs = 4
timeout_s = 60
params_schema = { additionalProperties = true, properties = { steps = { type = "integer", maximum = 8 } } }
"""  # noqa: E501


async def test_operator_models_without_schema_or_with_unknown_keys_allowed(api: Api) -> None:
    await add_models(api.pool, REPLICATE_MODELS)
    user = await api.user(credits=100)
    # The app loads the catalog at start; this test's models came after, so start it anew.
    async with running_app(api.settings) as (_, client):
        # No schema: only the defaults' own values; nothing else reaches the provider.
        refused = await client.post("/v1/jobs", headers=user.headers, json={
            "model": "replicate/flux", "prompt": "p",
            "params": {"aspect_ratio": "21:9", "disable_safety_checker": True}})
        assert refused.status_code == 422, refused.text
        assert {d["field"] for d in refused.json()["error"]["details"]} == {
            "params.aspect_ratio", "params.disable_safety_checker"}
        same = await client.post("/v1/jobs", headers=user.headers, json={
            "model": "replicate/flux", "prompt": "p", "params": {"aspect_ratio": "1:1"}})
        assert same.status_code == 202, same.text
        # additionalProperties = true: unknown keys pass, declared ones are still checked.
        open_ok = await client.post("/v1/jobs", headers=user.headers, json={
            "model": "replicate/open", "prompt": "p", "params": {"steps": 4, "lora": "x"}})
        assert open_ok.status_code == 202, open_ok.text
        assert open_ok.json()["params"] == {"steps": 4, "lora": "x"}
        open_bad = await client.post("/v1/jobs", headers=user.headers, json={
            "model": "replicate/open", "prompt": "p", "params": {"steps": 9, "lora": "x"}})
        assert open_bad.status_code == 422, open_bad.text
        assert open_bad.json()["error"]["details"] == [
            {"field": "params.steps", "message": "must be at most 8"}]
    assert await api.balance(user) == (95, 5)


async def test_a_catalog_change_while_running_is_checked_and_priced_with_the_new_entry(
    api: Api,
) -> None:
    user = await api.user(credits=100)
    first = await api.client.post("/v1/jobs", json=SKETCH, headers=user.headers)
    assert first.status_code == 202, first.text
    assert first.json()["cost"]["reserved"] == 2
    # The operator syncs a new entry (genq migrate) while this API still holds the old one.
    await add_models(api.pool, """
[[models]]
key = "local/sketch"
provider = "local"
ref = "sketch"
media_type = "image"
price_per_output = 5
max_outputs = 8
timeout_s = 60
params = { width = 256, height = 256, format = "png" }

[models.params_schema.properties]
width = { type = "integer", minimum = 1, maximum = 512 }
height = { type = "integer", minimum = 1, maximum = 512 }
format = { enum = ["png"] }
""")
    second = await api.client.post("/v1/jobs", json=SKETCH, headers=user.headers)
    assert second.status_code == 202, second.text
    assert second.json()["cost"] == {"price_per_output": 5, "reserved": 10, "captured": 0,
                                     "refunded": 0}
    third = await api.client.post("/v1/jobs", json={**SKETCH, "params": {"width": 1024}},
                                  headers=user.headers)
    assert third.status_code == 422, third.text
    assert third.json()["error"]["details"] == [
        {"field": "params.width", "message": "must be at most 512"}]
    assert await api.balance(user) == (88, 12)
    await assert_invariants(api.pool, user.id)
