"""What a job meets that another attempt would not get past (params a provider cannot use: the
job fails at once, refunded), and what another try does get past (PostgreSQL away for a second
while a job is claimed or finalized: the job still succeeds, on the same delivery)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker

from shared.db import Pool
from shared.services import prepare_database
from shared.settings import Settings
from tests.factories import assert_invariants, assets_of, create_job, job_row, ledger_kinds
from tests.integration.api_support import Api, proxy_to, running_app
from worker.context import WorkerContext
from worker.generation import process_job
from worker.main import close_worker, worker_options

# A catalog entry of this test's own, served by the built-in local provider with no defaults,
# so the client's params reach the provider as sent. Where the intake checks params against a
# per-model schema, this entry also needs one that lets any params through.
LOOSE_MODEL = """
[[models]]
key = "test/loose"
provider = "local"
ref = "loose"
media_type = "image"
price_per_output = 2
max_outputs = 4
timeout_s = 60
# Accepts any params at the intake, so a wrongly typed one reaches the provider.
params_schema = { additionalProperties = true }
"""


async def _burst(settings: Settings) -> Worker:
    """A real arq worker with genq's settings that runs what is queued, then stops."""
    options = worker_options(settings)
    options.update(burst=True, handle_signals=False)
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    return worker


@pytest.mark.parametrize("bad", [{"width": "abc"}, {"width": None}, {"height": [64]}])
async def test_params_the_provider_cannot_use_fail_the_job_at_once_refunded(
    settings: Settings, pool: Pool, tmp_path: Path, bad: dict[str, Any]
) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(LOOSE_MODEL, encoding="utf-8")
    loose = settings.model_copy(update={"models_file": models_file})
    assert loose.database_url is not None
    await prepare_database(loose.database_url, loose)  # what `genq migrate` does

    async with running_app(loose) as (app, client):
        api = Api(app, client, loose, pool)
        user = await api.user(credits=10)
        r = await client.post("/v1/jobs", headers=user.headers, json={
            "model": "test/loose", "prompt": "a kite", "num_outputs": 2, "params": bad})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert await api.balance(user) == (6, 4)

        worker = await _burst(loose)
        # One delivery, and arq saw it end normally: no retry, no failure left to arq.
        assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)

        r = await client.get(f"/v1/jobs/{job_id}", headers=user.headers)
        assert r.status_code == 200
        job = r.json()
        assert job["status"] == "failed"
        assert job["error"]["code"] == "invalid_params"
        message = job["error"]["message"]
        assert message.startswith("The model could not use the job's params: ")
        assert "Traceback" not in message and "File " not in message and "\n" not in message
        assert job["cost"]["captured"] == 0 and job["cost"]["refunded"] == 4
        assert job["outputs"] == []
        assert await api.balance(user) == (10, 0)

    row = await job_row(pool, uuid.UUID(job_id))
    assert (row["attempt"], row["lease_owner"]) == (1, None)
    assert [k for k, *_ in await ledger_kinds(pool, user.id)] == ["grant", "reserve", "refund"]
    await assert_invariants(pool, user.id)


async def test_postgres_away_while_a_job_is_claimed_the_same_delivery_runs_it(
    settings: Settings, pool: Pool
) -> None:
    assert settings.database_url is not None
    job = await create_job(pool, num_outputs=2, credits=2)
    async with proxy_to(settings.database_url) as proxy:
        via_proxy = settings.model_copy(
            update={"database_url": proxy.url_for(settings.database_url)})
        wc = await WorkerContext.open(via_proxy)
        try:
            await proxy.cut()
            started = time.monotonic()
            delivery = asyncio.create_task(process_job(wc, job.id))
            await asyncio.sleep(1.0)
            # Nothing could be claimed meanwhile.
            assert (await job_row(pool, job.id))["status"] == "queued"
            assert not delivery.done()
            await proxy.start()
            assert await delivery == "succeeded"
            print(f"claim blip: succeeded {time.monotonic() - started:.2f} s after the delivery "
                  "arrived, PostgreSQL cut for 1.0 s")
        finally:
            await wc.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["attempt"], row["outputs_made"]) == ("succeeded", 1, 2)
    assert len(await assets_of(pool, job.id)) == 2
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (0, 0)


async def test_postgres_away_at_the_final_write_the_job_still_succeeds(
    settings: Settings, pool: Pool
) -> None:
    assert settings.database_url is not None
    job = await create_job(pool, num_outputs=2, credits=2)
    async with proxy_to(settings.database_url) as proxy:
        via_proxy = settings.model_copy(update={
            "database_url": proxy.url_for(settings.database_url),
            "local_latency_s": 1.0, "heartbeat_s": 60.0, "lease_s": 180.0,
        })
        wc = await WorkerContext.open(via_proxy)
        try:
            delivery = asyncio.create_task(process_job(wc, job.id))
            while (await job_row(pool, job.id))["status"] != "running":
                await asyncio.sleep(0.02)
            # The provider takes 1 s; PostgreSQL is away from now until 0.8 s after that.
            await proxy.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(1.8)
            assert (await job_row(pool, job.id))["status"] == "running"
            await proxy.start()
            assert await delivery == "succeeded"
            print(f"finalize blip: succeeded {time.monotonic() - cut_at:.2f} s after the cut, "
                  "PostgreSQL cut for 1.8 s")
        finally:
            await wc.close()
    row = await job_row(pool, job.id)
    assert (row["status"], row["attempt"], row["outputs_made"]) == ("succeeded", 1, 2)
    assets = await assets_of(pool, job.id)
    assert len(assets) == 2
    for asset in assets:
        assert (settings.storage_root / asset["storage_key"]).is_file()
    assert [k for k, *_ in await ledger_kinds(pool, job.user_id)] == [
        "grant", "reserve", "capture"]
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (0, 0)
