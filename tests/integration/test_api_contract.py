"""The HTTP contract around the job routes: OpenAPI, request ids, routing errors, the catalog,
the ledger, and workspace assets with their bytes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from starlette.routing import Route

from shared.storage import LocalStorage, asset_key
from tests.integration.api_support import ADMIN, Api, User, api_fixture  # noqa: F401


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_documents_every_route_and_only_those(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document["openapi"].startswith("3.1")
    routes = {
        (route.path_format, method.lower())
        for route in api.app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented
    assert len(routes) == 53  # 18, the plan and storage quota assignments, 16 of the library,
    # collections, sharing, the two event streams, 11 of keys, admin users, job refunds and the
    # audit log, /metrics, 3 of webhooks (the secret, its rotation, a job's deliveries)
    for ref in _refs(document):
        assert _resolve(document, ref) is not None, ref
    job_body = document["components"]["schemas"]["JobCreate"]
    assert job_body["additionalProperties"] is False
    assert set(job_body["required"]) == {"model", "prompt"}


async def test_request_id_is_echoed_or_generated(api: Api) -> None:
    mine = await api.client.get("/healthz", headers={"X-Request-ID": "client-id.42"})
    assert mine.headers["x-request-id"] == "client-id.42"
    made = await api.client.get("/healthz")
    junk = await api.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    for r in (made, junk):
        assert len(r.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != junk.headers["x-request-id"]
    unauthorized = await api.client.get("/v1/jobs", headers={"X-Request-ID": "on-401"})
    assert unauthorized.headers["x-request-id"] == "on-401"


async def test_routing_errors_use_the_json_shape(api: Api) -> None:
    r = await api.client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await api.client.delete("/v1/jobs")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_models_lists_the_catalog(api: Api) -> None:
    user = await api.user()
    r = await api.client.get("/v1/models", headers=user.headers)
    assert r.status_code == 200
    models = {m["key"]: m for m in r.json()["data"]}
    assert models["local/poster"] == {
        "key": "local/poster", "provider": "local", "media_type": "image",
        "price_per_output": 3, "price_per_second": None, "fallback": None,
        "max_outputs": 4, "timeout_s": 60, "max_concurrency": None, "max_per_minute": None,
        "params": {"width": 512, "height": 768, "format": "webp"},
        "description": "Offline WebP renderer with a larger canvas.",
        "price_tiers": [{"above_megapixels": 1.1, "price_per_output": 6},
                        {"above_megapixels": 2.2, "price_per_output": 12}],
        "params_schema": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "width": {"type": "integer", "minimum": 1, "maximum": 2048,
                          "description": "Pixels."},
                "height": {"type": "integer", "minimum": 1, "maximum": 2048,
                           "description": "Pixels."},
                "format": {"enum": ["png", "webp"], "description": "Image format."},
            },
        },
    }


async def test_ledger_is_paginated_newest_first(api: Api) -> None:
    user = await api.user()
    for i in range(5):
        r = await api.client.post(f"/v1/admin/users/{user.id}/credits",
                                  json={"amount": i + 1, "reason": f"r{i}"},
                                  headers={**ADMIN, "Idempotency-Key": f"k{i}"})
        assert r.status_code == 200
    reasons: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/credits/ledger", params=params,
                                     headers=user.headers)).json()
        reasons += [e["reason"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert reasons == ["r4", "r3", "r2", "r1", "r0"]
    assert await api.balance(user) == (15, 0)
    bad = await api.client.get("/v1/credits/ledger?cursor=WyJ4Il0", headers=user.headers)
    assert bad.status_code == 422


async def _job_with_asset(api: Api, user: User, data: bytes) -> tuple[str, uuid.UUID]:
    """A job and one stored output, as a worker would leave them."""
    r = await api.client.post("/v1/jobs", json={"model": "local/sketch", "prompt": "dot"},
                              headers=user.headers)
    assert r.status_code == 202
    job_id = uuid.UUID(r.json()["id"])
    key = asset_key(user.id, job_id, 0, "png")
    LocalStorage(api.settings.storage_root).write_bytes(key, data)
    asset_id = await api.pool.fetchval(
        "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, "
        "storage_key, file_size_bytes, mime_type, width, height, generation_seed) "
        "VALUES ($1, $2, 0, 'image', $3, $4, 'image/png', 1, 1, 7) RETURNING id",
        user.id, job_id, key, len(data),
    )
    assert isinstance(asset_id, uuid.UUID)
    return str(job_id), asset_id


async def test_assets_list_read_and_stream(api: Api) -> None:
    alice, bob = await api.user(credits=10), await api.user(credits=10)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2000  # > one streamed chunk
    job_id, asset_id = await _job_with_asset(api, alice, data)

    listing = (await api.client.get("/v1/assets", headers=alice.headers)).json()
    assert [a["id"] for a in listing["data"]] == [str(asset_id)]
    content_url = listing["data"][0]["content_url"]
    assert content_url.startswith(f"/v1/files/{alice.id}/{job_id}/0.png?exp=")
    by_job = await api.client.get(f"/v1/assets?job_id={job_id}", headers=alice.headers)
    assert len(by_job.json()["data"]) == 1
    one = (await api.client.get(f"/v1/assets/{asset_id}", headers=alice.headers)).json()
    assert (one["mime_type"], one["size_bytes"], one["seed"]) == ("image/png", len(data), 7)
    job = (await api.client.get(f"/v1/jobs/{job_id}", headers=alice.headers)).json()
    assert [o["id"] for o in job["outputs"]] == [str(asset_id)]

    content = await api.client.get(f"/v1/assets/{asset_id}/content", headers=alice.headers)
    assert content.status_code == 200
    assert content.headers["content-type"] == "image/png"
    assert content.headers["content-length"] == str(len(data))
    assert content.content == data
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-disposition"] == f'inline; filename="{asset_id}.png"'

    # The signed URL serves the same bytes to anyone holding it, no Authorization header.
    signed = await api.client.get(content_url)
    assert signed.status_code == 200
    assert (signed.content, signed.headers["content-type"]) == (data, "image/png")
    assert signed.headers["etag"] == content.headers["etag"]

    # Bob sees none of it.
    for path in (f"/v1/assets/{asset_id}", f"/v1/assets/{asset_id}/content"):
        r = await api.client.get(path, headers=bob.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "asset_not_found"
    assert (await api.client.get("/v1/assets", headers=bob.headers)).json()["data"] == []
    bad_filter = await api.client.get("/v1/assets?job_id=nope", headers=alice.headers)
    assert bad_filter.status_code == 422


async def test_expired_or_missing_asset_is_404(api: Api) -> None:
    user = await api.user(credits=10)
    _, gone = await _job_with_asset(api, user, b"\x89PNG-gone")
    LocalStorage(api.settings.storage_root).delete_sync(
        await api.pool.fetchval("SELECT storage_key FROM workspace_assets WHERE id = $1",
                                gone))
    r = await api.client.get(f"/v1/assets/{gone}/content", headers=user.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "asset_not_found")

    _, expired = await _job_with_asset(api, user, b"\x89PNG-old")
    await api.pool.execute(
        "UPDATE workspace_assets SET expires_at = now() - $2::interval WHERE id = $1",
        expired, timedelta(seconds=1),
    )
    for path in (f"/v1/assets/{expired}", f"/v1/assets/{expired}/content"):
        assert (await api.client.get(path, headers=user.headers)).status_code == 404
    assert [a["id"] for a in (await api.client.get("/v1/assets", headers=user.headers)
                              ).json()["data"]] == [str(gone)]
