"""The real ``replicate`` client, through our provider, against a fake Replicate on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from shared.db import Pool
from shared.settings import Settings
from tests.factories import (
    NewJob,
    add_models,
    assert_invariants,
    assets_of,
    create_job,
    job_row,
    ledger_kinds,
    local,
)
from tests.fakes.replicate_server import FakeReplicate, Script
from tests.media_samples import avif, gif, heic, jpeg, mp4, noisy_png, png, quicktime, webm
from tests.s3_support import S3Server
from worker.context import WorkerContext
from worker.generation import process_job
from worker.main import run_generation

MODELS = """
[[models]]
key = "replicate/m"
provider = "replicate"
ref = "acme/m"
media_type = "image"
price_per_output = 3
max_outputs = 4
timeout_s = 30
params = { aspect_ratio = "1:1" }

[[models]]
key = "replicate/pinned"
provider = "replicate"
ref = "acme/pinned:abc123"
media_type = "image"
price_per_output = 2
max_outputs = 4
timeout_s = 30
"""


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    server = FakeReplicate().start()
    server.add_file("a.png", png(64, 48), "image/png")
    server.add_file("b.jpg", jpeg(32, 16), "image/jpeg")
    server.add_file("c.mp4", mp4(), "video/mp4")  # 64x48, 2.5 s
    yield server
    server.stop()


@pytest.fixture
def rsettings(settings: Settings, fake: FakeReplicate) -> Settings:
    return settings.model_copy(update={
        "replicate_base_url": fake.base_url,
        "replicate_api_token": SecretStr("test-token"),
        "output_allowed_hosts": ["127.0.0.1"],
        "provider_max_attempts": 3,
        "provider_backoff_base_s": 0.01,
        "provider_backoff_max_s": 0.05,
        "provider_poll_interval_s": 0.01,
        "provider_poll_max_interval_s": 0.05,
        "heartbeat_s": 0.1,
    })


@pytest.fixture
async def models(pool: Pool) -> None:
    await add_models(pool, MODELS)


async def _open(settings: Settings, **update: Any) -> WorkerContext:
    return await WorkerContext.open(settings.model_copy(update=update))


@pytest.fixture
async def wc(rsettings: Settings, models: None) -> AsyncIterator[WorkerContext]:
    ctx = await _open(rsettings)
    yield ctx
    await ctx.close()


async def _job(pool: Pool, n: int = 2, credits: int = 100, model: str = "replicate/m") -> NewJob:
    return await create_job(pool, model=model, num_outputs=n, credits=credits, seed=5)


async def test_success_stages_every_output(pool: Pool, wc: WorkerContext,
                                           fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(polls=2, outputs=["a.png", "b.jpg", "c.mp4"]))
    job = await _job(pool, n=3, credits=9)
    assert await process_job(wc, job.id) == "succeeded"

    row = await job_row(pool, job.id)
    assert (row["status"], row["outputs_made"]) == ("succeeded", 3)
    assert row["provider_prediction_id"] in fake.predictions
    assert fake.creates["acme/m"] == 1
    assert fake.auth_headers == {"Bearer test-token"}
    sent = fake.predictions[row["provider_prediction_id"]].input
    assert sent == {"aspect_ratio": "1:1", "prompt": "a red fox in the snow",
                    "num_outputs": 3, "seed": 5}
    assets = await assets_of(pool, job.id)
    got = [(a["mime_type"], a["asset_type"], a["width"], a["height"], a["duration_seconds"])
           for a in assets]
    assert got == [("image/png", "image", 64, 48, None), ("image/jpeg", "image", 32, 16, None),
                   ("video/mp4", "video", 64, 48, pytest.approx(2.5))]
    for a, name in zip(assets, ["a.png", "b.jpg", "c.mp4"], strict=True):
        path = local(wc.stager.storage).path(a["storage_key"])
        assert path.read_bytes() == fake.files[name].data
        assert a["file_size_bytes"] == len(fake.files[name].data)
    assert (await assert_invariants(pool, job.user_id)).balance == 0  # 3 x 3 captured


async def test_jobs_with_more_outputs_than_download_places_keep_them_all(
        pool: Pool, rsettings: Settings, models: None, fake: FakeReplicate) -> None:
    # One download at a time in this worker: the outputs of three jobs at once wait their
    # turn, each one's timeout starting once it has its place.
    fake.script("acme/m", Script(outputs=["a.png", "b.jpg", "c.mp4"]))
    ctx = await _open(rsettings, download_max_connections=1, download_timeout_s=5.0)
    try:
        jobs = [await _job(pool, n=3, credits=9) for _ in range(3)]
        assert await asyncio.gather(*(process_job(ctx, job.id) for job in jobs)) == [
            "succeeded"] * 3
    finally:
        await ctx.close()
    for job in jobs:
        assets = await assets_of(pool, job.id)
        assert [a["asset_index"] for a in assets] == [0, 1, 2]
        for a, name in zip(assets, ["a.png", "b.jpg", "c.mp4"], strict=True):
            assert local(ctx.stager.storage).path(a["storage_key"]).read_bytes() == (
                fake.files[name].data)
        assert (await assert_invariants(pool, job.user_id)).balance == 0


async def test_k_of_n_outputs_capture_k(pool: Pool, wc: WorkerContext,
                                        fake: FakeReplicate) -> None:
    # 4 asked, the model returns 3 and one of those is not an image: 2 are kept.
    fake.add_file("bad.png", b"<html>not an image</html>", "image/png")
    fake.script("acme/m", Script(outputs=["a.png", "bad.png", "b.jpg"]))
    job = await _job(pool, n=4, credits=20)
    assert await process_job(wc, job.id) == "succeeded"
    row = await job_row(pool, job.id)
    assert (row["status"], row["outputs_made"]) == ("succeeded", 2)
    assert [a["asset_index"] for a in await assets_of(pool, job.id)] == [0, 2]
    assert await ledger_kinds(pool, job.user_id) == [
        ("grant", 20, 0), ("reserve", -12, 12), ("capture", 0, -6), ("refund", 6, -6)]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (14, 0)


async def test_version_reference_creates_by_version(pool: Pool, wc: WorkerContext,
                                                    fake: FakeReplicate) -> None:
    fake.script("version:abc123", Script(outputs=["a.png"]))
    job = await _job(pool, n=1, model="replicate/pinned")
    assert await process_job(wc, job.id) == "succeeded"
    assert fake.creates["version:abc123"] == 1
    assert ("POST", "/v1/predictions") in fake.requests


async def _assert_failed_and_refunded(pool: Pool, job: NewJob, code: str) -> dict[str, Any]:
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == ("failed", code, 0)
    assert row["error_message"] and row["finished_at"] is not None
    assert await assets_of(pool, job.id) == []
    kinds = await ledger_kinds(pool, job.user_id)
    assert kinds[-1][0] == "refund" and all(k != "capture" for k, _, _ in kinds)
    account = await assert_invariants(pool, job.user_id)
    assert account.reserved == 0 and account.balance == 100
    return row


async def test_model_failure_refunds_all(pool: Pool, wc: WorkerContext,
                                         fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(polls=1, final="failed", error="CUDA out of memory"))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "model_failed")
    assert "CUDA out of memory" in row["error_message"]


async def test_429_then_success(pool: Pool, wc: WorkerContext, fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(create_errors=[429], retry_after="0", outputs=["a.png"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "succeeded"
    posts = [r for r in fake.requests if r == ("POST", "/v1/models/acme/m/predictions")]
    assert len(posts) == 2 and fake.creates["acme/m"] == 1
    assert (await assert_invariants(pool, job.user_id)).balance == 97


async def test_500s_until_attempts_run_out(pool: Pool, wc: WorkerContext,
                                           fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(create_errors=[500] * 10, retry_after=None))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "provider_unavailable")
    assert "3 attempts" in row["error_message"]
    posts = [r for r in fake.requests if r == ("POST", "/v1/models/acme/m/predictions")]
    assert len(posts) == 3 and fake.creates["acme/m"] == 0


async def test_output_too_large(pool: Pool, rsettings: Settings, models: None,
                                fake: FakeReplicate) -> None:
    fake.add_file("big.png", png(400, 400), "image/png")
    fake.script("acme/m", Script(outputs=["big.png"]))
    ctx = await _open(rsettings, output_max_bytes=1000)
    try:
        job = await _job(pool, n=1)
        assert await process_job(ctx, job.id) == "failed"
        await _assert_failed_and_refunded(pool, job, "output_too_large")
        assert not local(ctx.stager.storage).path(f"{job.user_id}/{job.id}").exists()
    finally:
        await ctx.close()


async def test_large_outputs_stream_intact_and_the_cap_holds_without_content_length(
    pool: Pool, rsettings: Settings, models: None, fake: FakeReplicate
) -> None:
    big = noisy_png(700, 700)  # ~1.5 MB: many chunks
    fake.add_file("big.png", big, "image/png")
    fake.add_file("big-chunked.png", big, "image/png", chunked=True)
    fake.script("acme/m", Script(outputs=["big.png", "big-chunked.png"]))
    ctx = await _open(rsettings, output_max_bytes=len(big) - 1)
    try:
        job = await _job(pool, n=2)
        assert await process_job(ctx, job.id) == "failed"
        await _assert_failed_and_refunded(pool, job, "output_too_large")
        assert list(local(ctx.stager.storage).root.rglob("*")) == []  # not even a temp file
    finally:
        await ctx.close()
    ctx = await _open(rsettings, output_max_bytes=len(big))
    try:
        job = await _job(pool, n=2)
        assert await process_job(ctx, job.id) == "succeeded"
        for a in await assets_of(pool, job.id):
            assert local(ctx.stager.storage).path(a["storage_key"]).read_bytes() == big
            assert (a["width"], a["height"], a["file_size_bytes"]) == (700, 700, len(big))
    finally:
        await ctx.close()


async def test_output_of_the_wrong_type(pool: Pool, wc: WorkerContext,
                                        fake: FakeReplicate) -> None:
    # It claims to be a PNG; its bytes say PDF.
    fake.add_file("doc.png", b"%PDF-1.7\n" + b"x" * 100, "image/png")
    fake.script("acme/m", Script(outputs=["doc.png"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "failed"
    await _assert_failed_and_refunded(pool, job, "unsupported_output_type")
    assert not local(wc.stager.storage).path(f"{job.user_id}/{job.id}").exists()


async def test_output_on_a_private_address_is_refused(pool: Pool, rsettings: Settings,
                                                      models: None,
                                                      fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(outputs=["a.png", "http://10.255.255.1/x.png"]))
    ctx = await _open(rsettings, output_allowed_hosts=[])  # 127.0.0.1 not allowlisted
    try:
        job = await _job(pool, n=2)
        assert await process_job(ctx, job.id) == "failed"
    finally:
        await ctx.close()
    row = await _assert_failed_and_refunded(pool, job, "output_address_blocked")
    assert "non-public address" in row["error_message"]
    assert not any(path.startswith("/files/") for _, path in fake.requests)


async def test_redirect_to_a_private_address_is_refused(pool: Pool, wc: WorkerContext,
                                                        fake: FakeReplicate) -> None:
    # 127.0.0.1 is allowlisted (the fake's own files); the hop it redirects to is not.
    fake.add_redirect("moved.png", "http://169.254.169.254/latest/meta-data")
    fake.add_redirect("ok.png", fake.file_url("a.png"))
    fake.script("acme/m", Script(outputs=["moved.png", "ok.png"]))
    job = await _job(pool, n=2, credits=6)
    assert await process_job(wc, job.id) == "succeeded"
    assets = await assets_of(pool, job.id)
    assert [(a["asset_index"], a["mime_type"]) for a in assets] == [(1, "image/png")]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (3, 0)


async def test_retry_after_is_honoured(pool: Pool, wc: WorkerContext,
                                       fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(create_errors=[429], retry_after="1", outputs=["a.png"]))
    job = await _job(pool, n=1)
    started = time.monotonic()
    assert await process_job(wc, job.id) == "succeeded"
    # The backoff alone would have waited at most provider_backoff_max_s (0.05 s).
    assert time.monotonic() - started >= 1.0
    assert fake.creates["acme/m"] == 1


async def test_cancel_while_running_cancels_at_the_provider(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    fake.script("acme/m", Script(polls=10_000, outputs=["a.png"]))
    job = await _job(pool)
    task = asyncio.create_task(process_job(wc, job.id))
    while (await job_row(pool, job.id))["provider_prediction_id"] is None:
        await asyncio.sleep(0.02)
    await pool.execute(
        "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1", job.id
    )
    assert await asyncio.wait_for(task, 5) == "canceled"
    row = await job_row(pool, job.id)
    assert row["status"] == "canceled"
    assert fake.cancels == [row["provider_prediction_id"]]
    assert fake.predictions[row["provider_prediction_id"]].status == "canceled"
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (100, 0)


async def test_model_timeout_fails_refunds_and_cancels(pool: Pool, wc: WorkerContext,
                                                       fake: FakeReplicate) -> None:
    await pool.execute("UPDATE models SET timeout_s = 1 WHERE key = 'replicate/m'")
    fake.script("acme/m", Script(polls=10_000))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "timeout")
    assert fake.cancels == [row["provider_prediction_id"]]


async def test_delivered_twice_in_a_row(pool: Pool, wc: WorkerContext,
                                        fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(outputs=["a.png", "b.jpg"]))
    job = await _job(pool)
    assert await run_generation({"genq": wc}, str(job.id)) == "succeeded"
    assert await run_generation({"genq": wc}, str(job.id)) == "skipped:succeeded"
    assert fake.creates["acme/m"] == 1
    assert len(await assets_of(pool, job.id)) == 2
    assert [k for k, _, _ in await ledger_kinds(pool, job.user_id)] == [
        "grant", "reserve", "capture"]


async def test_delivered_to_two_workers_at_once(pool: Pool, rsettings: Settings, models: None,
                                                fake: FakeReplicate) -> None:
    fake.script("acme/m", Script(polls=5, outputs=["a.png", "b.jpg"]))
    one, two = await _open(rsettings), await _open(rsettings)
    try:
        job = await _job(pool)
        results = await asyncio.gather(
            run_generation({"genq": one}, str(job.id)),
            run_generation({"genq": two}, str(job.id)),
            return_exceptions=True,
        )
    finally:
        await one.close()
        await two.close()
    # One ran it; the other found a live lease and asked arq to look again later.
    assert sorted(type(r).__name__ for r in results) == ["Retry", "str"]
    assert "succeeded" in results
    assert fake.creates["acme/m"] == 1
    assert len(await assets_of(pool, job.id)) == 2
    assert [k for k, _, _ in await ledger_kinds(pool, job.user_id)] == [
        "grant", "reserve", "capture"]
    assert (await assert_invariants(pool, job.user_id)).balance == 94


async def test_handed_back_job_resumes_the_same_prediction(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    fake.script("acme/m", Script(polls=10_000, outputs=["a.png"]))
    job = await _job(pool, n=1)
    first = asyncio.create_task(process_job(wc, job.id))
    while (await job_row(pool, job.id))["provider_prediction_id"] is None:
        await asyncio.sleep(0.02)
    first.cancel()  # what arq does to running jobs when a worker stops
    with pytest.raises(asyncio.CancelledError):
        await first
    row = await job_row(pool, job.id)
    assert row["status"] == "running" and row["lease_owner"] is None
    prediction = row["provider_prediction_id"]

    fake.script("acme/m", Script(polls=1, outputs=["a.png"]))
    fake.predictions[prediction].gets = 0
    assert await process_job(wc, job.id) == "succeeded"
    row = await job_row(pool, job.id)
    assert (row["attempt"], row["provider_prediction_id"]) == (2, prediction)
    assert fake.creates["acme/m"] == 1 and fake.cancels == []
    assert (await assert_invariants(pool, job.user_id)).balance == 97


async def test_last_attempt_died_so_the_job_fails_and_refunds(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    # Three workers died holding this job (its lease ran out each time); a 4th claim gives up,
    # cancels the prediction they left behind, and refunds.
    fake.script("acme/m", Script(polls=10_000))
    job = await _job(pool, n=1)
    first = asyncio.create_task(process_job(wc, job.id))
    while (await job_row(pool, job.id))["provider_prediction_id"] is None:
        await asyncio.sleep(0.02)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await pool.execute(
        "UPDATE generation_jobs SET attempt = max_attempts, lease_expires_at = now() "
        "WHERE id = $1", job.id,
    )
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "attempts_exhausted")
    assert fake.cancels == [row["provider_prediction_id"]]
    assert fake.creates["acme/m"] == 1


async def test_output_types_are_told_apart_and_the_allowlist_decides(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    # The Content-Type the host sends changes nothing: the bytes decide.
    fake.add_file("anim.gif", gif(40, 30), "image/gif")
    fake.add_file("pic.avif", avif(32, 24), "video/mp4")
    fake.add_file("clip.webm", webm(), "video/webm")
    fake.add_file("photo.heic", heic(), "image/jpeg")
    fake.script("acme/m", Script(outputs=["anim.gif", "pic.avif", "clip.webm", "photo.heic"]))
    job = await _job(pool, n=4, credits=20)
    assert await process_job(wc, job.id) == "succeeded"
    assets = await assets_of(pool, job.id)
    got = [(a["asset_index"], a["mime_type"], a["asset_type"], a["width"], a["height"])
           for a in assets]
    assert got == [(0, "image/gif", "image", 40, 30), (1, "image/avif", "image", 32, 24),
                   (2, "video/webm", "video", 64, 48)]
    assert assets[2]["duration_seconds"] == pytest.approx(2.0, abs=0.15)
    assert assets[2]["fps"] == pytest.approx(10.0)
    assert [a["storage_key"].rsplit("/", 1)[1] for a in assets] == [
        "0.gif", "1.avif", "2.webm"]
    # The HEIC output was refused and its 3 credits refunded.
    assert await ledger_kinds(pool, job.user_id) == [
        ("grant", 20, 0), ("reserve", -12, 12), ("capture", 0, -9), ("refund", 3, -3)]
    stored = {p.name for p in local(wc.stager.storage).root.rglob("*") if p.is_file()}
    assert not any(name.startswith("3.") for name in stored)


async def test_a_heic_output_is_refused_and_refunded(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    fake.add_file("photo.heic", heic(), "image/heic")
    fake.script("acme/m", Script(outputs=["photo.heic"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "unsupported_output_type")
    assert "image/heic" in row["error_message"]
    assert not local(wc.stager.storage).path(f"{job.user_id}/{job.id}").exists()


async def test_quicktime_is_refused_unless_allowed(
    pool: Pool, rsettings: Settings, wc: WorkerContext, fake: FakeReplicate
) -> None:
    fake.add_file("movie.mov", quicktime(), "video/mp4")
    fake.script("acme/m", Script(outputs=["movie.mov"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "unsupported_output_type")
    assert "video/quicktime" in row["error_message"]

    ctx = await _open(rsettings, output_allowed_types=["image/png", "video/quicktime"])
    try:
        job = await _job(pool, n=1)
        assert await process_job(ctx, job.id) == "succeeded"
        [asset] = await assets_of(pool, job.id)
        assert (asset["mime_type"], asset["asset_type"], asset["width"], asset["height"]) == (
            "video/quicktime", "video", 64, 48)
        assert asset["storage_key"].endswith("/0.mov")
    finally:
        await ctx.close()


async def test_a_variant_that_cannot_be_made_leaves_the_output_and_the_job_fine(
    pool: Pool, wc: WorkerContext, fake: FakeReplicate
) -> None:
    # The header is sound (300x300), the pixel data is cut short: no thumbnail can be made.
    fake.add_file("cut.png", noisy_png(300, 300)[:4000], "image/png")
    fake.script("acme/m", Script(outputs=["cut.png"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "succeeded"
    [asset] = await assets_of(pool, job.id)
    assert (asset["width"], asset["height"]) == (300, 300)
    assert await pool.fetchval(
        "SELECT count(*) FROM asset_variants WHERE asset_id = $1", asset["id"]) == 0
    stored = sorted(p.name for p in local(wc.stager.storage).root.rglob("*") if p.is_file())
    assert stored == ["0.png"]
    assert (await assert_invariants(pool, job.user_id)).balance == 97


async def test_outputs_stream_into_s3_measured_by_range_reads(
    pool: Pool, rsettings: Settings, models: None, fake: FakeReplicate, s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same staging on an S3 bucket: each output streamed up (the large one in several
    parts), an image's dimensions read back with a ranged GET, a video's probed by FFmpeg from
    a temporary copy, nothing left in the bucket by a refused output, and nothing written to
    the data dir."""
    for name, value in s3_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    big = noisy_png(1800, 1800)  # several 5 MiB parts
    assert len(big) > 6 * 1024 * 1024
    fake.add_file("big-chunked.png", big, "image/png", chunked=True)
    fake.add_file("doc.png", b"%PDF-1.7\n" + b"x" * 100, "image/png")
    s3 = {"storage_url": f"s3://{bucket}/out", "s3_endpoint_url": s3_server.endpoint_url,
          "s3_region": "us-east-1"}
    ctx = await _open(rsettings, **s3)
    try:
        fake.script("acme/m", Script(outputs=["a.png", "c.mp4", "big-chunked.png"]))
        job = await _job(pool, n=3)
        assert await process_job(ctx, job.id) == "succeeded"
        assets = await assets_of(pool, job.id)
        got = [(a["mime_type"], a["width"], a["height"], a["duration_seconds"],
                a["file_size_bytes"]) for a in assets]
        assert got == [("image/png", 64, 48, None, len(fake.files["a.png"].data)),
                       ("video/mp4", 64, 48, pytest.approx(2.5),
                        len(fake.files["c.mp4"].data)),
                       ("image/png", 1800, 1800, None, len(big))]
        variant_keys = [r["storage_key"] for r in await pool.fetch(
            "SELECT v.storage_key FROM asset_variants v JOIN workspace_assets a "
            "ON a.id = v.asset_id WHERE a.job_id = $1", job.id)]
        # Two thumbs (the large image also gets a web copy) and the video's poster.
        assert len(variant_keys) == 4
        assert s3_server.keys(bucket) == sorted(
            f"out/{k}" for k in [*(a["storage_key"] for a in assets), *variant_keys])
        client: Any = s3_server.client()
        for a, name in zip(assets, ["a.png", "c.mp4", "big-chunked.png"], strict=True):
            body = client.get_object(Bucket=bucket, Key=f"out/{a['storage_key']}")
            assert body["Body"].read() == fake.files[name].data
            assert body["ContentType"] == a["mime_type"]

        fake.script("acme/m", Script(outputs=["doc.png"]))
        refused = await _job(pool, n=1)
        assert await process_job(ctx, refused.id) == "failed"
        await _assert_failed_and_refunded(pool, refused, "unsupported_output_type")
        assert len(s3_server.keys(bucket)) == 3 + len(variant_keys)
    finally:
        await ctx.close()
    assert not (rsettings.data_dir / "storage").exists()
