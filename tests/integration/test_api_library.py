"""The library through the real app: saving copies bytes and variants to permanent keys that the
workspace expiry and the orphan sweep never touch; one item per asset under concurrency; the
storage quota; isolation between users; listing with filters."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.context import ApiContext
from shared.db import Pool
from shared.plans import load_plans, sync_plans
from shared.settings import Settings
from shared.storage import LocalStorage, asset_key
from tests.factories import files_on_disk, local
from tests.integration.api_support import ADMIN, Api, User, api_fixture  # noqa: F401
from worker import maintenance
from worker.context import WorkerContext
from worker.generation import process_job

PNG = b"\x89PNG\r\n\x1a\n" + b"library bytes" * 10


@pytest.fixture
async def wc(settings: Settings) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(settings)
    yield ctx
    await ctx.close()


def _storage(api: Api) -> LocalStorage:
    ctx = api.app.state.genq
    assert isinstance(ctx, ApiContext)
    return local(ctx.storage)


async def _assets(api: Api, user: User, count: int, *, size: int = len(PNG),
                  prompt: str = "a quiet harbour") -> list[uuid.UUID]:
    """``count`` stored image outputs of one job of ``user``, as a worker leaves them."""
    r = await api.client.post("/v1/jobs", json={"model": "local/sketch", "prompt": prompt},
                              headers=user.headers)
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["id"])
    storage = _storage(api)
    rows = []
    for index in range(count):
        key = asset_key(user.id, job_id, index, "png")
        await storage.put_bytes(key, PNG[:size] if size <= len(PNG) else PNG * (size // len(PNG)))
        rows.append((user.id, job_id, index, key, size, prompt))
    ids: list[uuid.UUID] = []
    for row in rows:
        ids.append(await api.pool.fetchval(
            "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type,"
            " storage_key, file_size_bytes, mime_type, original_prompt, model_used)"
            " VALUES ($1, $2, $3, 'image', $4, $5, 'image/png', $6, 'local/sketch')"
            " RETURNING id", *row,
        ))
    return ids


def _library_files(api: Api) -> set[str]:
    return {k for k in files_on_disk(_storage(api)) if k.startswith("library/")}


async def test_save_copies_bytes_and_variants_that_outlive_the_workspace(
    api: Api, wc: WorkerContext, pool: Pool
) -> None:
    user = await api.user(credits=20)
    r = await api.client.post("/v1/jobs", headers=user.headers, json={
        "model": "local/sketch", "prompt": "a lighthouse at dusk", "num_outputs": 1,
        "params": {"width": 1500, "height": 1100}, "seed": 3})
    job_id = uuid.UUID(r.json()["id"])
    assert await process_job(wc, job_id) == "succeeded"
    asset = (await api.client.get(f"/v1/assets?job_id={job_id}", headers=user.headers)
             ).json()["data"][0]
    original = await api.client.get(f"/v1/assets/{asset['id']}/content", headers=user.headers)

    r = await api.client.post("/v1/library", headers=user.headers, json={
        "asset_id": asset["id"], "title": "Lighthouse", "tags": ["Sea", "dusk", "sea"]})
    assert r.status_code == 201, r.text
    item = r.json()
    assert r.headers["location"] == f"/v1/library/{item['id']}"
    assert len(item["short_id"]) == 11
    assert item["tags"] == ["sea", "dusk"]
    assert item["prompt"] == "a lighthouse at dusk" and item["seed"] == 3
    assert item["job_id"] == str(job_id) and item["visibility"] == "private"
    assert item["asset"]["size_bytes"] == len(original.content)
    assert set(item["variants"]) == {"thumb", "web"}
    assert item["deleted_at"] is None and item["taken_down"] is False

    again = await api.client.post("/v1/library", headers=user.headers,
                                  json={"asset_id": asset["id"]})
    assert again.status_code == 200
    assert again.json()["id"] == item["id"] and again.json()["title"] == "Lighthouse"

    # The workspace asset expires: its files go, the library's copies stay and are served.
    await pool.execute("UPDATE workspace_assets SET expires_at = now() - interval '1 s'")
    report = await maintenance.expire_assets(pool, wc.stager.storage, 100)
    assert report.counts["rows_deleted"] == 1
    swept = await maintenance.sweep_orphan_files(pool, wc.stager.storage, 100, grace_s=-10)
    assert swept.counts.get("orphans_deleted", 0) == 0
    short = item["short_id"]
    assert files_on_disk(local(wc.stager.storage)) == {
        f"library/{user.id}/{short}.png", f"library/{user.id}/{short}.web.webp",
        f"library/{user.id}/{short}.thumb.webp"}
    content = await api.client.get(f"/v1/library/{item['id']}/content", headers=user.headers)
    assert content.status_code == 200
    assert content.content == original.content
    assert content.headers["content-type"] == "image/png"
    signed = await api.client.get(item["content_url"])
    assert signed.status_code == 200 and signed.content == original.content
    thumb = await api.client.get(item["variants"]["thumb"]["url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    fetched = await api.client.get(f"/v1/library/{item['id']}", headers=user.headers)
    assert fetched.status_code == 200 and fetched.json()["id"] == item["id"]


async def test_twenty_concurrent_saves_make_one_item_and_one_copy(api: Api) -> None:
    user = await api.user(credits=10)
    (asset,) = await _assets(api, user, 1)
    answers = await asyncio.gather(*(
        api.client.post("/v1/library", headers=user.headers, json={"asset_id": str(asset)})
        for _ in range(20)
    ))
    assert sorted(r.status_code for r in answers) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert await api.pool.fetchval("SELECT count(*) FROM user_library") == 1
    assert len(_library_files(api)) == 1


async def test_concurrent_saves_past_the_quota_keep_what_fits(
    settings: Settings, pool: Pool
) -> None:
    from tests.integration.api_support import running_app

    configured = settings.model_copy(update={"library_quota_bytes": 20 * 1000 + 500})
    async with running_app(configured) as (app, client):
        api = Api(app, client, configured, pool)
        user = await api.user(credits=10)
        assets = await _assets(api, user, 50, size=1000 - 1000 % len(PNG))
        size = await pool.fetchval("SELECT file_size_bytes FROM workspace_assets LIMIT 1")
        answers = await asyncio.gather(*(
            client.post("/v1/library", headers=user.headers, json={"asset_id": str(a)})
            for a in assets
        ))
        fits = (20 * 1000 + 500) // size
        codes = [r.status_code for r in answers]
        assert codes.count(201) == fits and codes.count(403) == 50 - fits
        refused = next(r for r in answers if r.status_code == 403).json()
        assert refused["error"]["code"] == "storage_quota_exceeded"
        assert set(refused["error"]) == {"code", "message", "details"}
        used = await pool.fetchval(
            "SELECT sum(file_size_bytes) FROM user_library WHERE user_id = $1", user.id)
        assert used == fits * size <= 20 * 1000 + 500
        # Refused saves leave no copy behind.
        assert len(_library_files(api)) == fits


async def test_saves_racing_the_workspace_expiry_never_lose_library_bytes(
    api: Api, pool: Pool
) -> None:
    user = await api.user(credits=10)
    assets = await _assets(api, user, 500)
    # Half of them expire now; the cleanup runs while the saves are in flight.
    await pool.execute(
        "UPDATE workspace_assets SET expires_at = now() - interval '1 s'"
        " WHERE asset_index % 2 = 0")
    storage = _storage(api)

    async def cleanup() -> None:
        for _ in range(5):
            await maintenance.expire_assets(pool, storage, 50)
            await asyncio.sleep(0)

    saves = asyncio.gather(*(
        api.client.post("/v1/library", headers=user.headers, json={"asset_id": str(a)})
        for a in assets
    ))
    answers, _ = await asyncio.gather(saves, cleanup())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {201, 404}
    assert codes.count(201) >= 250  # every unexpired asset is saved
    assert all(r.json()["error"]["code"] == "asset_not_found"
               for r in answers if r.status_code == 404)
    keys = {r["storage_key"] for r in await pool.fetch("SELECT storage_key FROM user_library")}
    assert len(keys) == codes.count(201)
    assert keys == _library_files(api)  # every item has its bytes, and no copy is left over
    await maintenance.expire_assets(pool, storage, 1000)
    assert keys == _library_files(api)


async def test_another_users_items_and_assets_are_not_found(api: Api) -> None:
    owner, other = await api.user(credits=10), await api.user(credits=10)
    (asset,) = await _assets(api, owner, 1)
    r = await api.client.post("/v1/library", headers=other.headers, json={"asset_id": str(asset)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "asset_not_found"
    item = (await api.client.post("/v1/library", headers=owner.headers,
                                  json={"asset_id": str(asset)})).json()
    for path in (f"/v1/library/{item['id']}", f"/v1/library/{item['id']}/content"):
        r = await api.client.get(path, headers=other.headers)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "library_item_not_found"
    listed = await api.client.get("/v1/library", headers=other.headers)
    assert listed.json() == {"data": [], "next_cursor": None}
    # A collection of another user cannot be named on a save.
    theirs = await api.pool.fetchval(
        "INSERT INTO user_collections (user_id, name) VALUES ($1, 'x') RETURNING id", other.id)
    (second,) = await _assets(api, owner, 1)
    r = await api.client.post("/v1/library", headers=owner.headers,
                              json={"asset_id": str(second), "collection_id": str(theirs)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    assert await api.pool.fetchval("SELECT count(*) FROM user_library") == 1


@pytest.mark.parametrize("body", [
    {}, {"asset_id": "nope"}, {"asset_id": str(uuid.UUID(int=1)), "tags": ["x" * 51]},
    {"asset_id": str(uuid.UUID(int=1)), "tags": [f"t{i}" for i in range(21)]},
    {"asset_id": str(uuid.UUID(int=1)), "visibility": "secret"},
    {"asset_id": str(uuid.UUID(int=1)), "extra": 1},
    {"asset_id": str(uuid.UUID(int=1)), "tags": ["sea\x00"]},
    {"asset_id": str(uuid.UUID(int=1)), "tags": ["\ud800"]},
    {"asset_id": str(uuid.UUID(int=1)), "title": "a\x00b"},
    {"asset_id": str(uuid.UUID(int=1)), "tags": ["sea\u0000side"]},
])
async def test_bad_save_bodies_are_422_and_write_nothing(api: Api, body: dict[str, Any]) -> None:
    user = await api.user(credits=10)
    if body.get("asset_id") == str(uuid.UUID(int=1)):
        (asset,) = await _assets(api, user, 1)  # a real asset: only the body is wrong
        body = {**body, "asset_id": str(asset)}
    r = await api.client.post("/v1/library", content=json.dumps(body),
                              headers={**user.headers, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert await api.pool.fetchval("SELECT count(*) FROM user_library") == 0


async def test_list_filters_search_and_pages(api: Api) -> None:
    user = await api.user(credits=10)
    foxes = await _assets(api, user, 3, prompt="a red fox in the snow")
    boats = await _assets(api, user, 2, prompt="boats in a harbour")
    for i, a in enumerate([*foxes, *boats]):
        r = await api.client.post("/v1/library", headers=user.headers, json={
            "asset_id": str(a), "tags": ["fox"] if a in foxes else ["boat"],
            "is_favorite": i == 0, "visibility": "public" if i == 4 else "private"})
        assert r.status_code == 201

    async def ids(query: str) -> list[str]:
        r = await api.client.get(f"/v1/library{query}", headers=user.headers)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["data"]]

    everything = await ids("")
    assert len(everything) == 5
    assert len(await ids("?q=fox")) == 3 and len(await ids("?q=harbour")) == 2
    assert len(await ids("?tag=FOX")) == 3 and len(await ids("?favorite=true")) == 1
    assert len(await ids("?visibility=public")) == 1 and await ids("?type=video") == []
    pages: list[str] = []
    cursor = ""
    while True:
        r = await api.client.get(f"/v1/library?limit=2{cursor}", headers=user.headers)
        pages.extend(i["id"] for i in r.json()["data"])
        if r.json()["next_cursor"] is None:
            break
        cursor = f"&cursor={r.json()['next_cursor']}"
    assert pages == everything
    for bad in ("?colour=red", "?q=", "?favorite=yes", "?type=gif", "?q=a&q=b",
                "?collection_id=12"):
        r = await api.client.get(f"/v1/library{bad}", headers=user.headers)
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "validation_error"


async def _save(api: Api, user: User, asset: uuid.UUID, **fields: Any) -> dict[str, Any]:
    r = await api.client.post("/v1/library", headers=user.headers,
                              json={"asset_id": str(asset), **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_patch_changes_only_the_fields_given(api: Api) -> None:
    user = await api.user(credits=10)
    (asset,) = await _assets(api, user, 1)
    coll = await api.pool.fetchval(
        "INSERT INTO user_collections (user_id, name) VALUES ($1, 'best') RETURNING id", user.id)
    item = await _save(api, user, asset, title="One", tags=["a"], collection_id=str(coll))
    path = f"/v1/library/{item['id']}"
    r = await api.client.patch(path, headers=user.headers,
                               json={"is_favorite": True, "tags": ["B", "c"]})
    assert r.status_code == 200, r.text
    assert (r.json()["title"], r.json()["tags"], r.json()["is_favorite"]) == ("One", ["b", "c"],
                                                                            True)
    assert r.json()["collection_id"] == str(coll)
    r = await api.client.patch(path, headers=user.headers,
                               json={"collection_id": None, "title": None})
    assert (r.json()["collection_id"], r.json()["title"]) == (None, None)
    assert await api.pool.fetchval(
        "SELECT asset_count FROM user_collections WHERE id = $1", coll) == 0
    for bad in ({"visibility": "secret"}, {"is_favorite": None}, {"tags": "x"}, {"id": "x"}):
        r = await api.client.patch(path, headers=user.headers, json=bad)
        assert r.status_code == 422, bad
    other = await api.user()
    r = await api.client.patch(path, headers=other.headers, json={"title": "mine"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "library_item_not_found"
    theirs = await api.pool.fetchval(
        "INSERT INTO user_collections (user_id, name) VALUES ($1, 'x') RETURNING id", other.id)
    r = await api.client.patch(path, headers=user.headers, json={"collection_id": str(theirs)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    assert (await api.client.get(path, headers=user.headers)).json()["title"] is None


async def test_delete_hides_at_once_and_restore_brings_back(api: Api) -> None:
    user = await api.user(credits=10)
    (asset,) = await _assets(api, user, 1)
    item = await _save(api, user, asset)
    path = f"/v1/library/{item['id']}"
    other = await api.user()
    assert (await api.client.delete(path, headers=other.headers)).status_code == 404
    r = await api.client.delete(path, headers=user.headers)
    assert r.status_code == 204 and r.content == b""
    assert (await api.client.delete(path, headers=user.headers)).status_code == 204
    listed = await api.client.get("/v1/library", headers=user.headers)
    assert listed.json()["data"] == []
    assert (await api.client.get(f"{path}/content", headers=user.headers)).status_code == 404
    assert (await api.client.patch(path, headers=user.headers, json={"title": "x"})
            ).status_code == 404
    trashed = await api.client.get(path, headers=user.headers)
    assert trashed.status_code == 200 and trashed.json()["deleted_at"] is not None
    assert await api.pool.fetchval(
        "SELECT bytes_used FROM library_usage WHERE user_id = $1", user.id) == 0
    assert (await api.client.post(f"{path}/restore", headers=other.headers)).status_code == 404
    r = await api.client.post(f"{path}/restore", headers=user.headers)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    assert [i["id"] for i in (await api.client.get("/v1/library", headers=user.headers)
                              ).json()["data"]] == [item["id"]]
    assert await api.pool.fetchval(
        "SELECT bytes_used FROM library_usage WHERE user_id = $1", user.id) == len(PNG)
    # Past the trash TTL it cannot be restored, and the purge takes row and file.
    await api.client.delete(path, headers=user.headers)
    await api.pool.execute("UPDATE user_library SET deleted_at = now() - make_interval("
                           "secs => $1 + 1)", float(api.settings.trash_ttl_s))
    r = await api.client.post(f"{path}/restore", headers=user.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "library_item_not_found"
    report = await maintenance.purge_trash(api.pool, _storage(api), api.settings.trash_ttl_s, 10)
    assert (report.counts["rows_deleted"], report.counts["files_deleted"]) == (1, 1)
    assert _library_files(api) == set()
    assert (await api.client.get(path, headers=user.headers)).status_code == 404


async def test_restore_past_the_quota_is_refused(settings: Settings, pool: Pool) -> None:
    from tests.integration.api_support import running_app

    configured = settings.model_copy(update={"library_quota_bytes": len(PNG)})
    async with running_app(configured) as (app, client):
        api = Api(app, client, configured, pool)
        user = await api.user(credits=10)
        first, second = await _assets(api, user, 2)
        item = await _save(api, user, first)
        await client.delete(f"/v1/library/{item['id']}", headers=user.headers)
        await _save(api, user, second)
        r = await client.post(f"/v1/library/{item['id']}/restore", headers=user.headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "storage_quota_exceeded"
        assert (await client.get(f"/v1/library/{item['id']}", headers=user.headers)
                ).json()["deleted_at"] is not None


SMALL_PLAN = """
[[plans]]
name = "small"
storage_quota_bytes = {quota}
"""


async def _on_small_plan(api: Api, tmp_path: Path, user: User, quota: int) -> None:
    """A plan ``small`` with ``quota`` storage bytes, and ``user`` on it (by the admin route)."""
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(SMALL_PLAN.format(quota=quota))
    async with api.pool.acquire() as conn:
        await sync_plans(conn, load_plans(plans_file))
    r = await api.client.put(f"/v1/admin/users/{user.id}/plan", json={"plan": "small"},
                             headers=ADMIN)
    assert r.status_code == 200, r.text


async def _storage_of(api: Api, user: User) -> dict[str, Any]:
    r = await api.client.get("/v1/me", headers=user.headers)
    assert r.status_code == 200, r.text
    storage: dict[str, Any] = r.json()["storage"]
    return storage


async def test_the_plans_quota_refuses_a_save_past_it(api: Api, tmp_path: Path) -> None:
    user = await api.user(credits=10)
    assert await _storage_of(api, user) == {
        "used_bytes": 0, "quota_bytes": api.settings.library_quota_bytes,
        "quota_source": "server"}
    await _on_small_plan(api, tmp_path, user, 3 * len(PNG))
    assets = await _assets(api, user, 4)
    for asset in assets[:3]:
        await _save(api, user, asset)
    assert await _storage_of(api, user) == {
        "used_bytes": 3 * len(PNG), "quota_bytes": 3 * len(PNG), "quota_source": "plan"}
    # An admin sees the same bytes, as the user's storage and as their usage.
    shown = await api.client.get(f"/v1/admin/users/{user.id}", headers=ADMIN)
    assert shown.status_code == 200, shown.text
    assert shown.json()["storage"]["used_bytes"] == 3 * len(PNG)
    assert shown.json()["usage"]["library_bytes"] == 3 * len(PNG)
    r = await api.client.post("/v1/library", headers=user.headers,
                              json={"asset_id": str(assets[3])})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "storage_quota_exceeded"
    # Nothing written: no row, no copy, the usage unchanged.
    assert await api.pool.fetchval(
        "SELECT count(*) FROM user_library WHERE user_id = $1", user.id) == 3
    assert len(_library_files(api)) == 3
    assert (await _storage_of(api, user))["used_bytes"] == 3 * len(PNG)
    # Another user on the default plan is not held to it.
    other = await api.user(credits=10)
    (theirs,) = await _assets(api, other, 1)
    await _save(api, other, theirs)


async def test_an_admins_quota_raises_and_lowers_the_plans(api: Api, tmp_path: Path) -> None:
    user = await api.user(credits=10)
    await _on_small_plan(api, tmp_path, user, 2 * len(PNG))
    assets = await _assets(api, user, 5)
    items = [await _save(api, user, a) for a in assets[:2]]
    path = f"/v1/admin/users/{user.id}/storage-quota"

    r = await api.client.put(path, json={"quota_bytes": 4 * len(PNG)}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == str(user.id) and r.json()["plan"]["name"] == "small"
    assert r.json()["storage"] == {
        "used_bytes": 2 * len(PNG), "quota_bytes": 4 * len(PNG), "quota_source": "user"}
    await _save(api, user, assets[2])
    await _save(api, user, assets[3])
    r = await api.client.post("/v1/library", headers=user.headers,
                              json={"asset_id": str(assets[4])})
    assert r.status_code == 403 and r.json()["error"]["code"] == "storage_quota_exceeded"

    # Lowered below what is used: the items stay; nothing more fits, not even a restore.
    await api.client.delete(f"/v1/library/{items[0]['id']}", headers=user.headers)
    r = await api.client.put(path, json={"quota_bytes": len(PNG)}, headers=ADMIN)
    assert r.json()["storage"] == {
        "used_bytes": 3 * len(PNG), "quota_bytes": len(PNG), "quota_source": "user"}
    listed = (await api.client.get("/v1/library", headers=user.headers)).json()["data"]
    assert len(listed) == 3
    r = await api.client.post(f"/v1/library/{items[0]['id']}/restore", headers=user.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "storage_quota_exceeded"
    r = await api.client.put(path, json={"quota_bytes": 0}, headers=ADMIN)
    assert r.json()["storage"]["quota_bytes"] == 0

    # null: the plan's again; raised, the restore fits.
    r = await api.client.put(path, json={"quota_bytes": None}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["storage"] == {
        "used_bytes": 3 * len(PNG), "quota_bytes": 2 * len(PNG), "quota_source": "plan"}
    await api.client.put(path, json={"quota_bytes": 5 * len(PNG)}, headers=ADMIN)
    r = await api.client.post(f"/v1/library/{items[0]['id']}/restore", headers=user.headers)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    await _save(api, user, assets[4])
    assert await _storage_of(api, user) == {
        "used_bytes": 5 * len(PNG), "quota_bytes": 5 * len(PNG), "quota_source": "user"}


@pytest.mark.parametrize("body", [
    {}, {"quota_bytes": -1}, {"quota_bytes": 1.5}, {"quota_bytes": "100"},
    {"quota_bytes": True}, {"quota_bytes": 10**15 + 1}, {"quota_bytes": 5, "plan": "free"},
])
async def test_bad_storage_quotas_are_422_and_change_nothing(
    api: Api, body: dict[str, Any]
) -> None:
    user = await api.user()
    r = await api.client.put(f"/v1/admin/users/{user.id}/storage-quota", json=body,
                             headers=ADMIN)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert (await _storage_of(api, user))["quota_source"] == "server"
    assert await api.pool.fetchval("SELECT count(*) FROM library_usage") == 0


async def test_storage_quota_of_no_user_or_without_the_admin_token(api: Api) -> None:
    user = await api.user()
    for target in (uuid.uuid4(), "not-a-uuid"):
        r = await api.client.put(f"/v1/admin/users/{target}/storage-quota",
                                 json={"quota_bytes": 5}, headers=ADMIN)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "user_not_found"
    r = await api.client.put(f"/v1/admin/users/{user.id}/storage-quota",
                             json={"quota_bytes": 10**12}, headers=user.headers)
    assert r.status_code == 401
    assert await api.pool.fetchval("SELECT count(*) FROM library_usage") == 0


async def test_fifty_concurrent_saves_against_a_plans_quota_keep_what_fits(
    api: Api, tmp_path: Path
) -> None:
    user = await api.user(credits=10)
    quota = 17 * len(PNG) + len(PNG) // 2  # 17 fit
    await _on_small_plan(api, tmp_path, user, quota)
    assets = await _assets(api, user, 50)
    answers = await asyncio.gather(*(
        api.client.post("/v1/library", headers=user.headers, json={"asset_id": str(a)})
        for a in assets
    ))
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 17 and codes.count(403) == 33
    assert all(r.json()["error"]["code"] == "storage_quota_exceeded"
               for r in answers if r.status_code == 403)
    used = await api.pool.fetchval(
        "SELECT sum(file_size_bytes) FROM user_library WHERE user_id = $1", user.id)
    assert used == 17 * len(PNG) <= quota
    assert (await _storage_of(api, user))["used_bytes"] == used
    saved = {r.json()["id"] for r in answers if r.status_code == 201}
    keys = {r["storage_key"] for r in await api.pool.fetch(
        "SELECT storage_key FROM user_library WHERE id = ANY($1::uuid[])", list(saved))}
    assert keys == _library_files(api)  # the refused saves left no copy


RACE_ROUNDS = 8
RACE_ASSETS = 40


async def test_a_save_as_its_asset_expires_saves_or_404s_and_never_loses_bytes(api: Api) -> None:
    """Saves race the workspace expiry deleting the very assets they save, which expire at the
    moment the saves run: each save is 201 with an item whose bytes (and variant) are in
    storage and are the asset's, or 404 ``asset_not_found``; nothing else, and no copy of a
    refused save is left behind."""
    user = await api.user(credits=10)
    storage = _storage(api)
    originals: dict[uuid.UUID, tuple[bytes, bytes]] = {}  # asset: its bytes, its thumb's
    answers: list[Any] = []
    window_s = 0.5
    for round_ in range(RACE_ROUNDS):
        assets = await _assets(api, user, RACE_ASSETS)
        for index, asset in enumerate(assets):
            key = await api.pool.fetchval(
                "SELECT storage_key FROM workspace_assets WHERE id = $1", asset)
            content = PNG[:-8] + round_.to_bytes(4, "big") + index.to_bytes(4, "big")
            thumb = b"RIFF" + content[-8:] + b"WEBP"
            await storage.put_bytes(key, content)
            await storage.put_bytes(f"{key}.thumb.webp", thumb)
            await api.pool.execute(
                "INSERT INTO asset_variants (asset_id, kind, mime_type, width, height,"
                " file_size_bytes, storage_key) VALUES ($1, 'thumb', 'image/webp', 1, 1, $2, $3)",
                asset, len(thumb), f"{key}.thumb.webp")
            originals[asset] = (content, thumb)
        # The first few have just expired, the last few are far from it; the rest expire one
        # after the other over as long as the previous round's saves took, so that assets
        # expire while their saves run.
        await api.pool.execute(
            "UPDATE workspace_assets SET expires_at = CASE"
            " WHEN asset_index < 4 THEN now() - interval '1 s'"
            " WHEN asset_index >= $2 - 4 THEN now() + interval '1 h'"
            " ELSE clock_timestamp()"
            "      + make_interval(secs => $3::float8 * (asset_index - 4) / ($2 - 8))"
            " END WHERE id = ANY($1::uuid[])", assets, RACE_ASSETS, window_s)
        done = asyncio.Event()

        async def expire(done: asyncio.Event) -> None:
            while not done.is_set():
                await maintenance.expire_assets(api.pool, storage, 8)
                await asyncio.sleep(0.002)

        expiry = asyncio.create_task(expire(done))
        started = time.monotonic()
        try:
            answers.extend(zip(assets, await asyncio.gather(*(
                api.client.post("/v1/library", headers=user.headers,
                                json={"asset_id": str(a)})
                for a in assets
            )), strict=True))
        finally:
            done.set()
            await expiry
        window_s = time.monotonic() - started

    codes = [r.status_code for _, r in answers]
    # The assets that expired while their saves ran went both ways.
    racing = [r.status_code for i, (_, r) in enumerate(answers)
              if 4 <= i % RACE_ASSETS < RACE_ASSETS - 4]
    assert racing.count(201) > 0 and racing.count(404) > 0, racing
    assert set(codes) == {201, 404}, sorted(set(codes))
    assert all(r.json()["error"]["code"] == "asset_not_found"
               for _, r in answers if r.status_code == 404)
    # Everything left expires now: the library's copies must not care.
    await api.pool.execute("UPDATE workspace_assets SET expires_at = now() - interval '1 s'")
    await maintenance.expire_assets(api.pool, storage, 1000)
    assert await api.pool.fetchval("SELECT count(*) FROM workspace_assets") == 0
    items = await api.pool.fetch("SELECT id, storage_key, variants FROM user_library")
    assert len(items) == codes.count(201)
    expected_files = set()
    for asset, r in answers:
        if r.status_code != 201:
            continue
        item = r.json()
        content, thumb = originals[asset]
        served = await api.client.get(f"/v1/library/{item['id']}/content", headers=user.headers)
        assert served.status_code == 200 and served.content == content
        row = next(i for i in items if str(i["id"]) == item["id"])
        expected_files.add(row["storage_key"])
        assert await storage.read_bytes(row["storage_key"]) == content
        for variant in row["variants"].values():  # the variant, if it was copied in time
            expected_files.add(variant["storage_key"])
            assert await storage.read_bytes(variant["storage_key"]) == thumb
    assert _library_files(api) == expected_files


async def test_no_route_reaches_another_users_item_or_shows_its_owner(api: Api) -> None:
    """Every library route with another user's item, asset or collection is 404 and changes
    nothing; the feed and the share link of a public item show neither its owner's id nor
    email."""
    owner, other = await api.user(credits=10), await api.user(credits=10)
    email = (await api.client.get("/v1/me", headers=owner.headers)).json()["email"]
    coll = (await api.client.post("/v1/collections", headers=owner.headers,
                                  json={"name": "mine"})).json()
    first, second = await _assets(api, owner, 2)
    item = await _save(api, owner, first, visibility="public", collection_id=coll["id"],
                       title="shown")
    trashed = await _save(api, owner, second)
    await api.client.delete(f"/v1/library/{trashed['id']}", headers=owner.headers)
    before = await api.pool.fetch("SELECT * FROM user_library ORDER BY id")
    path = f"/v1/library/{item['id']}"
    (own_asset,) = await _assets(api, other, 1)
    for method, url, body, code in (
        ("GET", path, None, "library_item_not_found"),
        ("PATCH", path, {"title": "theirs"}, "library_item_not_found"),
        ("DELETE", path, None, "library_item_not_found"),
        ("GET", f"{path}/content", None, "library_item_not_found"),
        ("HEAD", f"{path}/content", None, None),
        ("POST", f"/v1/library/{trashed['id']}/restore", None, "library_item_not_found"),
        ("GET", f"/v1/library/{trashed['id']}", None, "library_item_not_found"),
        ("POST", "/v1/library", {"asset_id": str(first)}, "asset_not_found"),
        ("POST", "/v1/library", {"asset_id": str(own_asset), "collection_id": coll["id"]},
         "collection_not_found"),
    ):
        r = await api.client.request(method, url, headers=other.headers, json=body)
        assert r.status_code == 404, (method, url, r.status_code)
        if code is not None:
            assert r.json()["error"]["code"] == code, (method, url)
    listed = await api.client.get(f"/v1/library?collection_id={coll['id']}",
                                  headers=other.headers)
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert await api.pool.fetch("SELECT * FROM user_library ORDER BY id") == before
    assert await api.pool.fetchval(
        "SELECT count(*) FROM user_library WHERE user_id = $1", other.id) == 0

    feed = await api.client.get("/v1/feed")
    shared = await api.client.get(f"/v1/shared/{item['short_id']}")
    assert [i["short_id"] for i in feed.json()["data"]] == [item["short_id"]]
    assert shared.status_code == 200 and shared.json()["title"] == "shown"
    for answer in (feed, shared):
        seen = answer.text + json.dumps(dict(answer.headers))
        for secret in (email, str(owner.id), owner.api_key, item["id"], coll["id"]):
            assert secret not in seen, secret
