"""Collections through the real app: CRUD, names unique per user, asset_count as items join,
move, leave, are deleted and restored, and isolation between users."""

from __future__ import annotations

import json
import uuid

from tests.integration.api_support import Api, api_fixture  # noqa: F401
from tests.integration.test_api_library import _assets, _save


async def test_collections_crud_and_counts(api: Api) -> None:
    user, other = await api.user(credits=10), await api.user()
    r = await api.client.post("/v1/collections", headers=user.headers,
                              json={"name": "Seas", "description": "blue"})
    assert r.status_code == 201, r.text
    seas = r.json()
    assert (seas["name"], seas["description"], seas["asset_count"]) == ("Seas", "blue", 0)
    assert r.headers["location"] == f"/v1/collections/{seas['id']}"
    dup = await api.client.post("/v1/collections", headers=user.headers, json={"name": "Seas"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "collection_name_taken"
    # Another user may use the same name.
    assert (await api.client.post("/v1/collections", headers=other.headers,
                                  json={"name": "Seas"})).status_code == 201
    skies = (await api.client.post("/v1/collections", headers=user.headers,
                                   json={"name": "Skies"})).json()

    async def count(c: dict[str, str]) -> int:
        r = await api.client.get(f"/v1/collections/{c['id']}", headers=user.headers)
        assert r.status_code == 200
        n: int = r.json()["asset_count"]
        return n

    assets = await _assets(api, user, 3)
    items = [await _save(api, user, a, collection_id=seas["id"]) for a in assets]
    assert await count(seas) == 3
    await api.client.patch(f"/v1/library/{items[0]['id']}", headers=user.headers,
                           json={"collection_id": skies["id"]})
    assert (await count(seas), await count(skies)) == (2, 1)
    await api.client.delete(f"/v1/library/{items[1]['id']}", headers=user.headers)
    assert await count(seas) == 1
    await api.client.post(f"/v1/library/{items[1]['id']}/restore", headers=user.headers)
    assert await count(seas) == 2
    listed = await api.client.get(f"/v1/library?collection_id={seas['id']}",
                                  headers=user.headers)
    assert {i["id"] for i in listed.json()["data"]} == {items[1]["id"], items[2]["id"]}

    r = await api.client.patch(f"/v1/collections/{seas['id']}", headers=user.headers,
                               json={"name": "Oceans"})
    assert r.status_code == 200 and r.json()["name"] == "Oceans"
    assert r.json()["description"] == "blue"
    r = await api.client.patch(f"/v1/collections/{seas['id']}", headers=user.headers,
                               json={"name": "Skies"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "collection_name_taken"
    page = await api.client.get("/v1/collections?limit=1", headers=user.headers)
    assert [c["id"] for c in page.json()["data"]] == [skies["id"]]
    rest = await api.client.get(f"/v1/collections?cursor={page.json()['next_cursor']}",
                                headers=user.headers)
    assert [c["id"] for c in rest.json()["data"]] == [seas["id"]]
    assert (await api.client.get("/v1/collections?sort=name", headers=user.headers)
            ).status_code == 422

    # Another user's collection is not found, whatever the route.
    for method, path, body in (
        ("GET", f"/v1/collections/{seas['id']}", None),
        ("PATCH", f"/v1/collections/{seas['id']}", {"name": "x"}),
        ("DELETE", f"/v1/collections/{seas['id']}", None),
        ("GET", f"/v1/collections/{uuid.uuid4()}", None),
        ("GET", "/v1/collections/nope", None),
    ):
        r = await api.client.request(method, path, headers=other.headers, json=body)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "collection_not_found"

    # Deleting a collection keeps its items, in no collection.
    assert (await api.client.delete(f"/v1/collections/{seas['id']}", headers=user.headers)
            ).status_code == 204
    item = await api.client.get(f"/v1/library/{items[2]['id']}", headers=user.headers)
    assert item.status_code == 200 and item.json()["collection_id"] is None
    assert (await api.client.get(f"/v1/collections/{seas['id']}", headers=user.headers)
            ).status_code == 404


async def test_text_postgres_cannot_store_is_422_and_writes_nothing(api: Api) -> None:
    user = await api.user()
    for body in ({"name": "a\x00b"}, {"name": "x", "description": "a\x00"},
                 {"name": "\ud800"}, {"name": "x", "description": "\udfff"}):
        # As JSON sends them: "\ud800" escaped, a lone surrogate once decoded.
        r = await api.client.post("/v1/collections", content=json.dumps(body),
                                  headers={**user.headers, "Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error"
    assert await api.pool.fetchval("SELECT count(*) FROM user_collections") == 0
    coll = (await api.client.post("/v1/collections", headers=user.headers,
                                  json={"name": "kept"})).json()
    r = await api.client.patch(f"/v1/collections/{coll['id']}", headers=user.headers,
                               json={"description": "\x00"})
    assert r.status_code == 422
    assert (await api.client.get(f"/v1/collections/{coll['id']}", headers=user.headers)
            ).json()["description"] is None
