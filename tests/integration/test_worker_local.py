"""The generation job with the built-in local provider, against real Postgres."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from shared.db import Pool
from shared.settings import Settings
from tests.factories import (
    assert_invariants,
    assets_of,
    create_job,
    job_row,
    ledger_kinds,
    local,
)
from worker.context import WorkerContext
from worker.generation import process_job
from worker.main import run_generation


@pytest.fixture
async def wc(settings: Settings) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(settings.model_copy(update={"heartbeat_s": 0.2}))
    yield ctx
    await ctx.close()


def _digest(path: object) -> str:
    with open(str(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


async def test_png_outputs_are_real_files_with_asset_rows(pool: Pool, wc: WorkerContext) -> None:
    job = await create_job(pool, model="local/sketch", num_outputs=3, credits=10)
    assert await run_generation({"genq": wc}, str(job.id)) == "succeeded"

    row = await job_row(pool, job.id)
    assert (row["status"], row["outputs_made"], row["attempt"]) == ("succeeded", 3, 1)
    assert row["finished_at"] is not None and row["error_code"] is None
    assert row["lease_owner"] is None
    assets = await assets_of(pool, job.id)
    assert [a["asset_index"] for a in assets] == [0, 1, 2]
    for a in assets:
        path = local(wc.stager.storage).path(a["storage_key"])
        assert a["storage_key"] == f"{job.user_id}/{job.id}/{a['asset_index']}.png"
        with Image.open(path) as img:
            assert (img.format, img.size) == ("PNG", (256, 256))
        assert (a["mime_type"], a["asset_type"], a["width"], a["height"]) == (
            "image/png", "image", 256, 256)
        assert a["file_size_bytes"] == path.stat().st_size
        assert a["generation_seed"] == 42 and a["model_used"] == "local/sketch"
        assert a["original_prompt"] == "a red fox in the snow"
        assert a["generation_settings"]["format"] == "png"
        ttl = (a["expires_at"] - a["created_at"]).total_seconds()
        assert abs(ttl - wc.settings.workspace_ttl_s) < 5
    # Three different images.
    assert len({_digest(local(wc.stager.storage).path(a["storage_key"])) for a in assets}) == 3

    # 3 outputs x 1 credit captured; nothing refunded.
    assert await ledger_kinds(pool, job.user_id) == [
        ("grant", 10, 0), ("reserve", -3, 3), ("capture", 0, -3)]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (7, 0)


async def test_webp_model_and_determinism(pool: Pool, wc: WorkerContext) -> None:
    a = await create_job(pool, model="local/poster", num_outputs=1, seed=7, prompt="a lighthouse")
    b = await create_job(pool, model="local/poster", num_outputs=1, seed=7, prompt="a lighthouse")
    c = await create_job(pool, model="local/poster", num_outputs=1, seed=8, prompt="a lighthouse")
    for job in (a, b, c):
        assert await process_job(wc, job.id) == "succeeded"
    paths = [local(wc.stager.storage).path((await assets_of(pool, j.id))[0]["storage_key"])
             for j in (a, b, c)]
    with Image.open(paths[0]) as img:
        assert (img.format, img.size) == ("WEBP", (512, 768))
    asset = (await assets_of(pool, a.id))[0]
    assert (asset["mime_type"], asset["width"], asset["height"]) == ("image/webp", 512, 768)
    assert _digest(paths[0]) == _digest(paths[1])  # same prompt + seed: same bytes
    assert _digest(paths[0]) != _digest(paths[2])  # other seed: other image


@pytest.mark.parametrize(("width", "height"), [(1, 1), (64, 64), (65, 64)])
async def test_small_and_large_outputs_are_the_same_real_images(
    pool: Pool, wc: WorkerContext, width: int, height: int
) -> None:
    # Up to 64x64 pixels the local model renders on the event loop, above in a thread: the
    # output is the same either way, a real image of the asked size, measured and stored.
    job = await create_job(pool, num_outputs=2, seed=3,
                           params={"width": width, "height": height, "format": "png"})
    assert await process_job(wc, job.id) == "succeeded"
    assets = await assets_of(pool, job.id)
    assert [(a["width"], a["height"]) for a in assets] == [(width, height)] * 2
    for asset in assets:
        path = local(wc.stager.storage).path(asset["storage_key"])
        with Image.open(path) as img:
            assert (img.format, img.size) == ("PNG", (width, height))
        assert path.stat().st_size == asset["file_size_bytes"]
    again = await create_job(pool, num_outputs=1, seed=3,
                             params={"width": width, "height": height, "format": "png"})
    assert await process_job(wc, again.id) == "succeeded"
    first = local(wc.stager.storage).path(assets[0]["storage_key"])
    second = local(wc.stager.storage).path((await assets_of(pool, again.id))[0]["storage_key"])
    assert _digest(first) == _digest(second)  # deterministic on both paths


async def test_duplicate_delivery_sequential_is_a_no_op(pool: Pool, wc: WorkerContext) -> None:
    job = await create_job(pool, num_outputs=2)
    assert await run_generation({"genq": wc}, str(job.id)) == "succeeded"
    assert await run_generation({"genq": wc}, str(job.id)) == "skipped:succeeded"
    assert len(await assets_of(pool, job.id)) == 2
    kinds = [k for k, _, _ in await ledger_kinds(pool, job.user_id)]
    assert kinds == ["grant", "reserve", "capture"]
    assert (await job_row(pool, job.id))["attempt"] == 1


async def test_simulated_failure_refunds_everything(pool: Pool, settings: Settings) -> None:
    ctx = await WorkerContext.open(settings.model_copy(update={"local_failure_rate": 1.0}))
    try:
        job = await create_job(pool, num_outputs=4, credits=4)
        assert await process_job(ctx, job.id) == "failed"
    finally:
        await ctx.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == ("failed", "model_failed", 0)
    assert "failed" in row["error_message"]
    assert await assets_of(pool, job.id) == []
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (4, 0)


async def test_cancel_while_running_refunds(pool: Pool, settings: Settings) -> None:
    ctx = await WorkerContext.open(
        settings.model_copy(update={"local_latency_s": 5.0, "heartbeat_s": 0.1})
    )
    try:
        job = await create_job(pool, num_outputs=2, credits=2)
        task = asyncio.create_task(process_job(ctx, job.id))
        while (await job_row(pool, job.id))["status"] != "running":
            await asyncio.sleep(0.02)
        await pool.execute(
            "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1", job.id
        )
        assert await asyncio.wait_for(task, 3) == "canceled"
    finally:
        await ctx.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"]) == ("canceled", "canceled")
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (2, 0)


async def test_model_timeout_fails_and_refunds(pool: Pool, settings: Settings) -> None:
    await pool.execute("UPDATE models SET timeout_s = 1 WHERE key = 'local/sketch'")
    ctx = await WorkerContext.open(settings.model_copy(update={"local_latency_s": 3.0}))
    try:
        job = await create_job(pool, num_outputs=1, credits=1)
        assert await process_job(ctx, job.id) == "failed"
    finally:
        await ctx.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"]) == ("failed", "timeout")
    assert (await assert_invariants(pool, job.user_id)).balance == 1


async def test_a_late_attempt_never_deletes_the_winners_files(
    pool: Pool, settings: Settings
) -> None:
    # Attempt 1 stalls past its lease (its heartbeat is far apart); attempt 2 takes the job over
    # and finishes first. Attempt 1 then stages the same keys and is fenced out at finalize: it
    # must not delete files that attempt 2's asset rows point at.
    slow = await WorkerContext.open(settings.model_copy(
        update={"local_latency_s": 1.5, "lease_s": 100.0, "heartbeat_s": 60.0}))
    fast = await WorkerContext.open(settings.model_copy(update={"local_latency_s": 0.1}))
    try:
        job = await create_job(pool, num_outputs=2, credits=2)
        first = asyncio.create_task(process_job(slow, job.id))
        while (await job_row(pool, job.id))["status"] != "running":
            await asyncio.sleep(0.02)
        await pool.execute(
            "UPDATE generation_jobs SET lease_expires_at = now() - interval '1 second'"
            " WHERE id = $1", job.id,
        )
        assert await process_job(fast, job.id) == "succeeded"
        assert await asyncio.wait_for(first, 10) == "lease_lost"
    finally:
        await slow.close()
        await fast.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assets = await assets_of(pool, job.id)
    assert len(assets) == 2
    for asset in assets:
        assert (settings.storage_root / asset["storage_key"]).is_file()
    assert [k for k, *_ in await ledger_kinds(pool, job.user_id)].count("capture") == 1
