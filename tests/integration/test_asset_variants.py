"""Variants (thumb, web, poster) made by the worker, stored as rows and files, shown on the
asset JSON and served by their own route; they go with their asset."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from shared.db import Pool
from shared.settings import Settings
from tests.factories import files_on_disk, local
from tests.integration.api_support import Api, User, api_fixture  # noqa: F401
from worker import maintenance
from worker.context import WorkerContext
from worker.generation import process_job


@pytest.fixture
async def wc(settings: Settings) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(settings)
    yield ctx
    await ctx.close()


async def _run(api: Api, wc: WorkerContext, user: User, model: str,
               params: dict[str, Any]) -> dict[str, Any]:
    """Submit over HTTP, run the job in the worker, return the job's JSON."""
    r = await api.client.post("/v1/jobs", headers=user.headers, json={
        "model": model, "prompt": "a lighthouse at dusk", "num_outputs": 1,
        "params": params, "seed": 3})
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["id"])
    assert await process_job(wc, job_id) == "succeeded"
    r = await api.client.get(f"/v1/jobs/{job_id}", headers=user.headers)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def _unsigned(variants: dict[str, Any]) -> dict[str, Any]:
    """Variants with their URLs' expiry and signature left out (signed anew per read)."""
    return {k: {**v, "url": v["url"].split("?", 1)[0]} for k, v in variants.items()}


async def _webp(api: Api, user: User | None, url: str) -> tuple[int, int]:
    r = await api.client.get(url, headers=user.headers if user is not None else None)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-length"] == str(len(r.content))
    with Image.open(io.BytesIO(r.content)) as image:
        assert image.format == "WEBP"
        return image.size


@pytest.mark.parametrize(
    ("size", "expected"),
    [((2000, 1500), {"web": (1024, 768), "thumb": (256, 192)}),
     ((1024, 1024), {"thumb": (256, 256)}),
     ((200, 200), {"thumb": (200, 200)})],
)
async def test_image_variants_web_only_when_larger(
    api: Api, wc: WorkerContext, size: tuple[int, int], expected: dict[str, tuple[int, int]]
) -> None:
    user = await api.user(credits=20)
    job = await _run(api, wc, user, "local/sketch", {"width": size[0], "height": size[1]})
    [asset] = job["outputs"]
    assert (asset["width"], asset["height"]) == size
    variants = asset["variants"]
    assert set(variants) == set(expected)
    base = f"{user.id}/{job['id']}/0"
    rows = await api.pool.fetch(
        "SELECT kind, mime_type, width, height, file_size_bytes, storage_key "
        "FROM asset_variants WHERE asset_id = $1 ORDER BY kind", uuid.UUID(asset["id"]))
    assert [r["kind"] for r in rows] == sorted(expected)
    for row in rows:
        kind = row["kind"]
        shown = variants[kind]
        assert shown["url"].startswith(f"/v1/files/{base}.{kind}.webp?exp=")
        assert (shown["width"], shown["height"]) == expected[kind]
        assert (row["mime_type"], row["width"], row["height"]) == ("image/webp",
                                                                   *expected[kind])
        assert row["storage_key"] == f"{base}.{kind}.webp"
        assert local(wc.stager.storage).path(row["storage_key"]).stat().st_size == (
            row["file_size_bytes"])
        # The variant's url is signed: it loads without the Authorization header.
        assert await _webp(api, None, shown["url"]) == expected[kind]
        authed = f"/v1/assets/{asset['id']}/variants/{kind}"
        assert await _webp(api, user, authed) == expected[kind]
    # The same asset read alone shows the same variants.
    r = await api.client.get(f"/v1/assets/{asset['id']}", headers=user.headers)
    assert _unsigned(r.json()["variants"]) == _unsigned(variants)


async def test_variant_route_answers_404_for_a_missing_variant_or_another_user(
    api: Api, wc: WorkerContext
) -> None:
    user, other = await api.user(credits=20), await api.user(credits=20)
    job = await _run(api, wc, user, "local/sketch", {"width": 200, "height": 200})
    asset_id = job["outputs"][0]["id"]
    for who, kind in ((user, "web"), (user, "poster"), (user, "nonsense"), (other, "thumb")):
        r = await api.client.get(f"/v1/assets/{asset_id}/variants/{kind}", headers=who.headers)
        assert r.status_code == 404, (kind, r.text)
        assert r.json()["error"]["code"] == "asset_not_found"
    r = await api.client.get("/v1/assets/not-a-uuid/variants/thumb", headers=user.headers)
    assert r.status_code == 404
    r = await api.client.get(f"/v1/assets/{asset_id}/variants/thumb")
    assert r.status_code == 401


async def test_variants_off_makes_none(api: Api, settings: Settings) -> None:
    ctx = await WorkerContext.open(settings.model_copy(update={"variants_enabled": False}))
    try:
        user = await api.user(credits=20)
        job = await _run(api, ctx, user, "local/sketch", {"width": 300, "height": 300})
        assert job["outputs"][0]["variants"] == {}
        assert files_on_disk(local(ctx.stager.storage)) == {f"{user.id}/{job['id']}/0.png"}
    finally:
        await ctx.close()


async def test_expiry_deletes_variants_with_their_asset_and_the_sweep_keeps_them(
    api: Api, wc: WorkerContext, pool: Pool
) -> None:
    user = await api.user(credits=20)
    job = await _run(api, wc, user, "local/sketch", {"width": 1500, "height": 1100})
    storage = local(wc.stager.storage)
    base = f"{user.id}/{job['id']}/0"
    assert files_on_disk(storage) == {f"{base}.png", f"{base}.web.webp", f"{base}.thumb.webp"}
    # Every file has a row: the orphan sweep deletes none of them, even with no grace.
    report = await maintenance.sweep_orphan_files(pool, storage, 100, grace_s=-10)
    assert report.counts.get("orphans_deleted", 0) == 0
    assert files_on_disk(storage) == {f"{base}.png", f"{base}.web.webp", f"{base}.thumb.webp"}

    await pool.execute("UPDATE workspace_assets SET expires_at = now() - interval '1 s' "
                       "WHERE job_id = $1", uuid.UUID(job["id"]))
    report = await maintenance.expire_assets(pool, storage, 100)
    assert report.counts["rows_deleted"] == 1
    assert report.counts["files_deleted"] == 3
    assert files_on_disk(storage) == set()
    assert await pool.fetchval("SELECT count(*) FROM asset_variants") == 0
