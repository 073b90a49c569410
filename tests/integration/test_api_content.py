"""Content delivery through the real app, on both storage backends: signed ``content_url``s
that work without a header (and refuse tampered or expired ones), byte ranges for seeking a
video, ETags and 304, HEAD, and CORS for the configured origins only."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from api.context import ApiContext
from shared.db import Pool
from shared.settings import Settings
from shared.storage import asset_key
from tests.integration.api_support import Api, User, running_app
from tests.s3_support import S3Server

VIDEO = b"\x00\x00\x00\x18ftypmp42" + os.urandom(3 * 1024 * 1024)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of the app under test (parametrize indirectly to pick one)."""
    name: str = request.param
    return name


@pytest.fixture
async def api(
    request: pytest.FixtureRequest, backend: str, settings: Settings, pool: Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Api]:
    update: dict[str, object] = {"cors_origins": ["https://app.example.com"]}
    if backend == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        for name, value in s3.env().items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        update |= {"storage_url": f"s3://{s3.new_bucket()}/assets",
                   "s3_endpoint_url": s3.endpoint_url, "s3_region": "us-east-1"}
    configured = settings.model_copy(update=update)
    async with running_app(configured) as (app, client):
        yield Api(app, client, configured, pool)


@dataclass
class StoredVideo:
    user: User
    asset_id: uuid.UUID
    key: str
    content_url: str


async def _video(api: Api) -> StoredVideo:
    """A job and one stored video output, as a worker leaves them."""
    user = await api.user(credits=10)
    r = await api.client.post("/v1/jobs", json={"model": "local/sketch", "prompt": "waves"},
                              headers=user.headers)
    assert r.status_code == 202
    job_id = uuid.UUID(r.json()["id"])
    key = asset_key(user.id, job_id, 0, "mp4")
    ctx = api.app.state.genq
    assert isinstance(ctx, ApiContext)
    await ctx.storage.put_bytes(key, VIDEO, content_type="video/mp4")
    asset_id = await api.pool.fetchval(
        "INSERT INTO workspace_assets (user_id, job_id, asset_index, asset_type, "
        "storage_key, file_size_bytes, mime_type, duration_seconds) "
        "VALUES ($1, $2, 0, 'video', $3, $4, 'video/mp4', 2.0) RETURNING id",
        user.id, job_id, key, len(VIDEO),
    )
    one = await api.client.get(f"/v1/assets/{asset_id}", headers=user.headers)
    return StoredVideo(user, asset_id, key, one.json()["content_url"])


async def _fetch(api: Api, url: str, headers: dict[str, str] | None = None,
                 method: str = "GET") -> httpx.Response:
    """GET a content_url as a browser would: no Authorization header."""
    if url.startswith("/"):
        return await api.client.request(method, url, headers=headers)
    async with httpx.AsyncClient() as client:  # the store's presigned URL
        return await client.request(method, url, headers=headers)


async def test_content_url_loads_without_a_header(api: Api) -> None:
    video = await _video(api)
    if api.settings.storage_url is None:
        assert video.content_url.startswith(f"/v1/files/{video.key}?exp=")
    else:
        assert video.content_url.startswith(api.settings.s3_endpoint_url or "-")
    r = await _fetch(api, video.content_url)
    assert r.status_code == 200
    assert r.content == VIDEO
    assert r.headers["content-type"] == "video/mp4"
    job = await api.client.get(f"/v1/jobs/{video.key.split('/')[1]}",
                               headers=video.user.headers)
    (output,) = job.json()["outputs"]
    assert (await _fetch(api, output["content_url"])).content == VIDEO


# The signed route is the local folder's; S3's presigned URL is served by the store itself.
@pytest.mark.parametrize(("backend", "route"),
                         [("file", "assets"), ("file", "signed"), ("s3", "assets")],
                         indirect=["backend"])
async def test_ranges_for_seeking(api: Api, route: str) -> None:
    video = await _video(api)
    url, auth = f"/v1/assets/{video.asset_id}/content", video.user.headers
    if route == "signed":
        url, auth = video.content_url, {}
    size = len(VIDEO)
    cases = {"bytes=0-99": (0, 100), "bytes=1000000-1999999": (1_000_000, 2_000_000),
             "bytes=-500": (size - 500, size), f"bytes={size - 10}-": (size - 10, size),
             f"bytes=10-{size + 99}": (10, size)}
    for header, (start, end) in cases.items():
        r = await api.client.get(url, headers={**auth, "Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert r.headers["content-length"] == str(end - start)
        assert r.content == VIDEO[start:end], header
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        r = await api.client.get(url, headers={**auth, "Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}"
        assert r.json()["error"]["code"] == "range_not_satisfiable"
    # Several ranges, or a malformed header: the whole file (RFC 9110 lets a server ignore).
    for header in ("bytes=0-1,5-9", "items=0-5", "bytes=9-2"):
        r = await api.client.get(url, headers={**auth, "Range": header})
        assert (r.status_code, len(r.content)) == (200, size), header


# The signed route is the local folder's; S3's presigned URL is served by the store itself.
@pytest.mark.parametrize(("backend", "route"),
                         [("file", "assets"), ("file", "signed"), ("s3", "assets")],
                         indirect=["backend"])
async def test_etag_304_head_and_headers(api: Api, route: str) -> None:
    video = await _video(api)
    url, auth = f"/v1/assets/{video.asset_id}/content", video.user.headers
    if route == "signed":
        url, auth = video.content_url, {}
    full = await api.client.get(url, headers=auth)
    assert full.status_code == 200
    etag = full.headers["etag"]
    assert etag.startswith('"')
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["x-content-type-options"] == "nosniff"
    assert full.headers["cache-control"].startswith("private, max-age=")
    assert full.headers["content-disposition"].startswith('inline; filename="')
    assert full.headers["last-modified"].endswith(" GMT")

    again = await api.client.get(url, headers={**auth, "If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag
    listed = await api.client.get(url, headers={**auth, "If-None-Match": f'"other", {etag}'})
    assert listed.status_code == 304
    stale = await api.client.get(url, headers={**auth, "If-None-Match": '"other"'})
    assert (stale.status_code, stale.content) == (200, VIDEO)
    # If-Range with another validator: the whole (new) file instead of a piece of it.
    moved = await api.client.get(url, headers={**auth, "Range": "bytes=0-9",
                                               "If-Range": '"other"'})
    assert (moved.status_code, len(moved.content)) == (200, len(VIDEO))
    same = await api.client.get(url, headers={**auth, "Range": "bytes=0-9", "If-Range": etag})
    assert (same.status_code, same.content) == (206, VIDEO[:10])

    head = await api.client.head(url, headers=auth)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(VIDEO))
    assert head.headers["etag"] == etag
    assert head.headers["content-type"] == "video/mp4"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


# /v1/files URLs are the local folder's; S3 presigns its own.
@pytest.mark.parametrize("backend", ["file"], indirect=True)
async def test_tampered_and_expired_signatures_are_refused(api: Api) -> None:
    video = await _video(api)
    sig = parse_qs(urlsplit(video.content_url).query)["sig"][0]
    exp = parse_qs(urlsplit(video.content_url).query)["exp"][0]
    other_user_key = asset_key(uuid.uuid4(), uuid.uuid4(), 0, "mp4")
    tampered = [
        _with_query(video.content_url, sig=sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")),
        _with_query(video.content_url, exp=str(int(exp) + 3600)),  # a longer life: forged
        _with_query(video.content_url.replace(video.key, other_user_key)),
        urlsplit(video.content_url).path,  # no signature at all
        _with_query(video.content_url, exp="soon"),
    ]
    for url in tampered:
        r = await api.client.get(url)
        assert r.status_code == 403, url
        assert r.json()["error"]["code"] == "invalid_signature", url
        assert r.content.find(VIDEO[:64]) == -1

    ctx = api.app.state.genq
    assert isinstance(ctx, ApiContext)
    expired = ctx.signer.files_url(video.key, now=time.time() - api.settings.url_ttl_s - 1)
    r = await api.client.get(expired)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "url_expired")
    assert (await api.client.get(video.content_url)).status_code == 200  # the good one works


@pytest.mark.parametrize("backend", ["file"], indirect=True)
async def test_cors_preflight_only_for_allowed_origins(api: Api) -> None:
    video = await _video(api)
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization, range"}
    allowed = await api.client.options(
        f"/v1/assets/{video.asset_id}/content",
        headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "GET" in allowed.headers["access-control-allow-methods"]
    assert "range" in allowed.headers["access-control-allow-headers"].lower()

    refused = await api.client.options(
        f"/v1/assets/{video.asset_id}/content",
        headers={"Origin": "https://evil.example.net", **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    simple = await api.client.get(f"/v1/assets/{video.asset_id}/content",
                                  headers={**video.user.headers, "Range": "bytes=0-3",
                                           "Origin": "https://app.example.com"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "content-range" in simple.headers["access-control-expose-headers"].lower()
    other = await api.client.get(f"/v1/assets/{video.asset_id}/content",
                                 headers={**video.user.headers,
                                          "Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_unless_configured(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        r = await client.options("/v1/jobs", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
