"""The feed and share links through the real app: only public (feed) or public and unlisted
(links) items that are not deleted or taken down; never an owner's id or email; keyset pages;
the admin's takedown."""

from __future__ import annotations

import json

from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401
from tests.integration.test_api_library import PNG, _assets, _save


async def test_feed_and_share_links_show_only_what_users_chose(api: Api) -> None:
    owner, other = await api.user(credits=10), await api.user(credits=10)
    assets = await _assets(api, owner, 6, prompt="a kite over dunes")
    public, unlisted, private, deleted, taken, later = [
        await _save(api, owner, a, visibility=v, title=f"t{i}")
        for i, (a, v) in enumerate(zip(assets, ["public", "unlisted", "private", "public",
                                                "public", "private"], strict=True))
    ]
    await api.client.delete(f"/v1/library/{deleted['id']}", headers=owner.headers)
    r = await api.client.post(f"/v1/admin/library/{taken['id']}/takedown", headers=ADMIN,
                              json={"reason": "not allowed"})
    assert r.status_code == 200 and r.json()["taken_down"] is True
    assert (await api.client.get(f"/v1/library/{taken['id']}", headers=owner.headers)
            ).json()["taken_down"] is True
    assert (await api.client.post(f"/v1/admin/library/{taken['id']}/takedown",
                                  headers=owner.headers, json={"reason": "x"})).status_code == 401
    # Made public later: first in the feed.
    r = await api.client.patch(f"/v1/library/{later['id']}", headers=owner.headers,
                               json={"visibility": "public"})
    assert r.status_code == 200

    feed = await api.client.get("/v1/feed")
    assert feed.status_code == 200
    assert [i["short_id"] for i in feed.json()["data"]] == [later["short_id"],
                                                           public["short_id"]]
    text = feed.text
    for secret in (str(owner.id), owner.api_key, public["id"], str(other.id)):
        assert secret not in text
    assert set(feed.json()["data"][0]) == {
        "short_id", "asset", "prompt", "model", "title", "tags", "content_url", "variants",
        "published_at"}
    page = await api.client.get("/v1/feed?limit=1")
    assert [i["short_id"] for i in page.json()["data"]] == [later["short_id"]]
    rest = await api.client.get(f"/v1/feed?limit=1&cursor={page.json()['next_cursor']}")
    assert [i["short_id"] for i in rest.json()["data"]] == [public["short_id"]]
    assert rest.json()["next_cursor"] is None
    assert (await api.client.get("/v1/feed?type=video")).json()["data"] == []
    for bad in ("?user=1", "?type=gif", "?limit=0", "?cursor=x"):
        assert (await api.client.get(f"/v1/feed{bad}")).status_code == 422, bad

    for item in (public, unlisted):
        r = await api.client.get(f"/v1/shared/{item['short_id']}")
        assert r.status_code == 200 and r.json()["title"] == item["title"]
        assert str(owner.id) not in r.text and item["id"] not in r.text
        content = await api.client.get(r.json()["content_url"])
        assert content.status_code == 200 and content.content == PNG
        assert content.headers["cache-control"].startswith("public")
    for item in (private, deleted, taken):
        for path in (f"/v1/shared/{item['short_id']}", f"/v1/shared/{item['short_id']}/content"):
            r = await api.client.get(path)
            assert r.status_code == 404, (item["visibility"], path)
            assert r.json()["error"]["code"] == "library_item_not_found"
    assert (await api.client.get("/v1/shared/short")).status_code == 404
    # Deleting hides a shared item at once.
    await api.client.delete(f"/v1/library/{unlisted['id']}", headers=owner.headers)
    assert (await api.client.get(f"/v1/shared/{unlisted['short_id']}")).status_code == 404
    assert json.loads((await api.client.get("/v1/feed")).text)["data"][-1]["short_id"] == \
        public["short_id"]


async def test_the_feed_filtered_by_type_and_model_pages_through_what_matches(api: Api) -> None:
    owner = await api.user(credits=10)
    assets = await _assets(api, owner, 9)
    # Three videos and six images, of two models, published one after the other.
    kinds = ["image", "video", "image", "image", "video", "image", "image", "video", "image"]
    models = ["m/a", "m/a", "m/b", "m/a", "m/b", "m/b", "m/a", "m/a", "m/b"]
    for asset, kind, model in zip(assets, kinds, models, strict=True):
        await api.pool.execute(
            "UPDATE workspace_assets SET asset_type = $2, model_used = $3,"
            " mime_type = CASE WHEN $2 = 'video' THEN 'video/mp4' ELSE mime_type END"
            " WHERE id = $1", asset, kind, model)
    items = [await _save(api, owner, a, visibility="public") for a in assets]
    newest_first = list(reversed(list(zip(items, kinds, models, strict=True))))

    async def walk(query: str) -> list[str]:
        seen: list[str] = []
        cursor = ""
        while True:
            r = await api.client.get(f"/v1/feed?limit=2{query}{cursor}")
            assert r.status_code == 200, r.text
            seen.extend(i["short_id"] for i in r.json()["data"])
            if r.json()["next_cursor"] is None:
                return seen
            cursor = f"&cursor={r.json()['next_cursor']}"

    assert await walk("") == [i["short_id"] for i, _, _ in newest_first]
    for query, keep in (
        ("&type=video", lambda k, m: k == "video"),
        ("&type=image", lambda k, m: k == "image"),
        ("&model=m/b", lambda k, m: m == "m/b"),
        ("&type=video&model=m/a", lambda k, m: k == "video" and m == "m/a"),
        ("&model=m/c", lambda k, m: False),
    ):
        assert await walk(query) == [i["short_id"] for i, k, m in newest_first if keep(k, m)], \
            query
