"""The fal provider against a fake fal queue on 127.0.0.1 speaking its queue protocol."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from api.jobs.reads import load_job
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
from tests.fakes.fal_server import FakeFal, FalScript
from tests.media_samples import mp4, png
from worker.context import WorkerContext
from worker.generation import process_job

FLUX = "fal-ai/flux/dev"
MODELS = f"""
[[models]]
key = "fal/flux-dev"
provider = "fal"
ref = "{FLUX}"
media_type = "image"
price_per_output = 3
max_outputs = 4
timeout_s = 30
params = {{ image_size = "square_hd" }}

[models.params_schema.properties]
image_size = {{ enum = ["square_hd", "landscape_4_3"] }}

[[models]]
key = "fal/video"
provider = "fal"
ref = "fal-ai/kling-video/v2/text-to-video"
media_type = "video"
price_per_output = 10
max_outputs = 1
timeout_s = 30
"""


@pytest.fixture
def fal() -> Iterator[FakeFal]:
    server = FakeFal().start()
    server.add_file("a.png", png(64, 48), "image/png")
    server.add_file("b.png", png(32, 16), "image/png")
    server.add_file("c.mp4", mp4(), "video/mp4")  # 64x48, 2.5 s
    yield server
    server.stop()


@pytest.fixture
def fsettings(settings: Settings, fal: FakeFal) -> Settings:
    return settings.model_copy(update={
        "fal_queue_url": fal.queue_url,
        "fal_key": SecretStr(fal.key),
        "output_allowed_hosts": ["127.0.0.1"],
        "provider_max_attempts": 3,
        "provider_backoff_base_s": 0.01,
        "provider_backoff_max_s": 0.05,
        "provider_poll_interval_s": 0.01,
        "provider_poll_max_interval_s": 0.05,
        "heartbeat_s": 0.1,
    })


@pytest.fixture
async def wc(fsettings: Settings, pool: Pool) -> AsyncIterator[WorkerContext]:
    await add_models(pool, MODELS)
    ctx = await WorkerContext.open(fsettings)
    yield ctx
    await ctx.close()


async def _job(pool: Pool, n: int = 2, model: str = "fal/flux-dev") -> NewJob:
    return await create_job(pool, model=model, num_outputs=n, credits=100, seed=5)


async def _job_json(pool: Pool, job: NewJob) -> dict[str, Any]:
    async def sign(key: str) -> str:
        return key

    async with pool.acquire() as conn:
        return (await load_job(conn, job.user_id, job.id, sign=sign)).model_dump(mode="json")


async def _until_set(pool: Pool, job: NewJob, column: str, task: asyncio.Task[str]) -> None:
    """Wait until the job row's ``column`` is set while the attempt runs; if the attempt ends
    first, fail with what it returned."""
    while (await job_row(pool, job.id))[column] is None:
        assert not task.done(), f"the attempt ended ({task.result()}) before {column} was set"
        await asyncio.sleep(0.02)


async def _assert_failed_and_refunded(pool: Pool, job: NewJob, code: str) -> dict[str, Any]:
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == ("failed", code, 0)
    assert await assets_of(pool, job.id) == []
    kinds = await ledger_kinds(pool, job.user_id)
    assert kinds[-1][0] == "refund" and all(k != "capture" for k, _, _ in kinds)
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (100, 0)
    return row


async def test_success_through_the_queue(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(queue_polls=3, progress_polls=2, outputs=["a.png", "b.png"]))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "succeeded"

    row = await job_row(pool, job.id)
    assert (row["status"], row["outputs_made"]) == ("succeeded", 2)
    rid = row["provider_prediction_id"]
    assert rid in fal.requests_by_id and fal.submits[FLUX] == 1
    assert fal.auth_headers == {f"Key {fal.key}"}
    assert fal.requests_by_id[rid].input == {
        "image_size": "square_hd", "prompt": "a red fox in the snow", "num_images": 2, "seed": 5}
    # Submitted under the full id, polled and fetched under its first two segments.
    assert ("POST", f"/{FLUX}") in fal.calls
    assert ("GET", f"/fal-ai/flux/requests/{rid}/status") in fal.calls
    assert ("GET", f"/fal-ai/flux/requests/{rid}") in fal.calls
    assets = await assets_of(pool, job.id)
    assert [(a["mime_type"], a["width"], a["height"]) for a in assets] == [
        ("image/png", 64, 48), ("image/png", 32, 16)]
    path = local(wc.stager.storage).path(assets[0]["storage_key"])
    assert path.read_bytes() == fal.files["a.png"][0]
    assert row["provider_queue_position"] is None
    assert (await _job_json(pool, job))["provider"] == {"queue_position": None}
    assert (await assert_invariants(pool, job.user_id)).balance == 94


async def test_a_video_result(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    fal.script("fal-ai/kling-video/v2/text-to-video", FalScript(outputs=["c.mp4"], kind="video"))
    job = await _job(pool, n=1, model="fal/video")
    assert await process_job(wc, job.id) == "succeeded"
    [asset] = await assets_of(pool, job.id)
    assert (asset["asset_type"], asset["duration_seconds"]) == ("video", pytest.approx(2.5))
    assert ("GET", f"/fal-ai/kling-video/requests/"
                   f"{(await job_row(pool, job.id))['provider_prediction_id']}/status") in fal.calls


async def test_queue_position_shows_on_the_job_while_fal_queues_it(
    pool: Pool, wc: WorkerContext, fal: FakeFal
) -> None:
    hold = threading.Event()
    hold.set()
    fal.script(FLUX, FalScript(hold=hold, hold_position=3, outputs=["a.png"]))
    job = await _job(pool, n=1)
    task = asyncio.create_task(process_job(wc, job.id))
    await _until_set(pool, job, "provider_queue_position", task)
    seen = await _job_json(pool, job)
    assert (seen["status"], seen["provider"]) == ("running", {"queue_position": 3})
    hold.clear()
    assert await asyncio.wait_for(task, 10) == "succeeded"
    assert (await job_row(pool, job.id))["provider_queue_position"] is None
    assert (await _job_json(pool, job))["provider"] == {"queue_position": None}


async def test_model_failure_refunds_all(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(error="CUDA out of memory"))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "model_failed")
    assert "CUDA out of memory" in row["error_message"]
    assert fal.submits[FLUX] == 1


async def test_429_with_retry_after_then_success(pool: Pool, wc: WorkerContext,
                                                 fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(submit_errors=[429], retry_after="1", outputs=["a.png"]))
    job = await _job(pool, n=1)
    started = time.monotonic()
    assert await process_job(wc, job.id) == "succeeded"
    # The backoff alone would have waited at most provider_backoff_max_s (0.05 s).
    assert time.monotonic() - started >= 1.0
    assert [c for c in fal.calls if c == ("POST", f"/{FLUX}")] == [("POST", f"/{FLUX}")] * 2
    assert fal.submits[FLUX] == 1
    assert (await assert_invariants(pool, job.user_id)).balance == 97


async def test_5xx_until_attempts_run_out(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(submit_errors=[503] * 10, retry_after=None))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "provider_unavailable")
    assert "3 attempts" in row["error_message"]
    assert [c for c in fal.calls if c == ("POST", f"/{FLUX}")] == [("POST", f"/{FLUX}")] * 3
    assert fal.submits[FLUX] == 0


async def test_status_5xx_are_retried_on_the_same_request(pool: Pool, wc: WorkerContext,
                                                          fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(status_errors=[500, 502], retry_after=None, outputs=["a.png"]))
    job = await _job(pool, n=1)
    assert await process_job(wc, job.id) == "succeeded"
    assert fal.submits[FLUX] == 1


async def test_a_wrong_key_fails_without_retrying(pool: Pool, fsettings: Settings,
                                                  fal: FakeFal) -> None:
    await add_models(pool, MODELS)
    fal.script(FLUX, FalScript(outputs=["a.png"]))
    ctx = await WorkerContext.open(fsettings.model_copy(update={"fal_key": SecretStr("wrong")}))
    try:
        job = await _job(pool)
        assert await process_job(ctx, job.id) == "failed"
    finally:
        await ctx.close()
    row = await _assert_failed_and_refunded(pool, job, "provider_rejected")
    assert "401" in row["error_message"]
    assert len([c for c in fal.calls if c[0] == "POST"]) == 1


async def test_cancel_while_queued_at_fal(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    hold = threading.Event()
    hold.set()
    fal.script(FLUX, FalScript(hold=hold, outputs=["a.png"]))
    job = await _job(pool)
    task = asyncio.create_task(process_job(wc, job.id))
    await _until_set(pool, job, "provider_queue_position", task)
    await pool.execute(
        "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1", job.id
    )
    assert await asyncio.wait_for(task, 10) == "canceled"
    row = await job_row(pool, job.id)
    rid = row["provider_prediction_id"]
    assert row["status"] == "canceled"
    assert fal.cancels == [rid] and fal.requests_by_id[rid].state == "CANCELLED"
    assert ("PUT", f"/fal-ai/flux/requests/{rid}/cancel") in fal.calls
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (100, 0)


async def test_handed_back_job_resumes_the_same_request(
    pool: Pool, wc: WorkerContext, fal: FakeFal
) -> None:
    hold = threading.Event()
    hold.set()
    fal.script(FLUX, FalScript(hold=hold, outputs=["a.png"]))
    job = await _job(pool, n=1)
    first = asyncio.create_task(process_job(wc, job.id))
    await _until_set(pool, job, "provider_prediction_id", first)
    first.cancel()  # what arq does to running jobs when a worker stops
    with pytest.raises(asyncio.CancelledError):
        await first
    rid = (await job_row(pool, job.id))["provider_prediction_id"]

    hold.clear()
    assert await process_job(wc, job.id) == "succeeded"
    row = await job_row(pool, job.id)
    assert (row["attempt"], row["provider_prediction_id"]) == (2, rid)
    assert fal.submits[FLUX] == 1 and fal.cancels == []
    assert (await assert_invariants(pool, job.user_id)).balance == 97


async def test_a_lost_request_fails_the_job(pool: Pool, wc: WorkerContext, fal: FakeFal) -> None:
    fal.script(FLUX, FalScript(outputs=["a.png"]))
    job = await _job(pool, n=1)
    await pool.execute("UPDATE generation_jobs SET provider_prediction_id = 'req-nope' "
                       "WHERE id = $1", job.id)
    assert await process_job(wc, job.id) == "failed"
    await _assert_failed_and_refunded(pool, job, "prediction_lost")
    assert fal.submits[FLUX] == 0
