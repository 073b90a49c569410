"""A cancel answered 202 while the job runs wins, even when the worker learns of it only at
its final write: the job ends canceled, fully refunded, with no assets and no files."""

from __future__ import annotations

import asyncio
import uuid

from shared.db import Pool
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.types import JobStatus
from tests.factories import (
    assert_invariants,
    assets_of,
    create_job,
    files_on_disk,
    job_row,
    ledger_kinds,
)
from tests.integration.api_support import Api, running_app
from tests.integration.test_worker_batches import OWNER, staged
from worker.context import WorkerContext
from worker.generation import process_job
from worker.jobs import Final, Outcome, WorkerBatches


async def test_cancel_just_before_the_final_write_wins(settings: Settings, pool: Pool) -> None:
    # The heartbeat is far longer than the job, so only the final write can notice the cancel.
    slow = settings.model_copy(
        update={"local_latency_s": 1.0, "heartbeat_s": 60.0, "lease_s": 180.0})
    wc = await WorkerContext.open(slow)
    try:
        async with running_app(settings) as (app, client):
            api = Api(app, client, settings, pool)
            user = await api.user(credits=10)
            r = await client.post("/v1/jobs", headers=user.headers, json={
                "model": "local/sketch", "prompt": "a lighthouse", "num_outputs": 3})
            assert r.status_code == 202, r.text
            job_id = uuid.UUID(r.json()["id"])

            delivery = asyncio.create_task(process_job(wc, job_id))
            while (await job_row(pool, job_id))["status"] != "running":
                await asyncio.sleep(0.02)
            cancel = await client.post(f"/v1/jobs/{job_id}/cancel", headers=user.headers)
            assert cancel.status_code == 202, cancel.text
            assert not delivery.done()  # the provider is still working

            assert await delivery == "canceled"
            r = await client.get(f"/v1/jobs/{job_id}", headers=user.headers)
            job = r.json()
            assert job["status"] == "canceled"
            assert job["error"]["code"] == "canceled"
            assert job["cost"]["captured"] == 0 and job["cost"]["refunded"] == 3
            assert job["outputs"] == []
            assert await api.balance(user) == (10, 0)
            assets = await client.get("/v1/assets", headers=user.headers)
            assert assets.status_code == 200 and assets.json()["data"] == []
    finally:
        await wc.close()

    row = await job_row(pool, job_id)
    assert (row["status"], row["outputs_made"], row["attempt"]) == ("canceled", 0, 1)
    assert await assets_of(pool, job_id) == []
    assert await ledger_kinds(pool, user.id) == [
        ("grant", 10, 0), ("reserve", -3, 3), ("refund", 3, -3)]
    await assert_invariants(pool, user.id)
    # The outputs were rendered and staged, then deleted.
    assert files_on_disk(LocalStorage(settings.storage_root)) == set()


async def test_a_batch_of_final_writes_lets_each_cancel_win(
    pool: Pool, settings: Settings
) -> None:
    batches = WorkerBatches(pool, settings, OWNER)
    done, canceled = [await create_job(pool, num_outputs=2) for _ in range(2)]
    claimed = {c.id: c for c in await asyncio.gather(
        *(batches.claim(j.id) for j in (done, canceled))) if c is not None}
    await pool.execute(
        "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1", canceled.id)

    written = await asyncio.gather(*(
        batches.finalize(Final(claimed[j.id], Outcome(JobStatus.SUCCEEDED),
                               staged(claimed[j.id], 2)))
        for j in (done, canceled)))
    assert written == ["succeeded", "canceled"]
    assert len(await assets_of(pool, done.id)) == 2
    await assert_canceled_and_refunded(pool, canceled.id, canceled.user_id)
    await batches.drain()


async def assert_canceled_and_refunded(pool: Pool, job_id: uuid.UUID,
                                       user_id: uuid.UUID) -> None:
    """The two-output job ended canceled, with no assets, its 2 credits refunded."""
    assert await assets_of(pool, job_id) == []
    row = await job_row(pool, job_id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == ("canceled", "canceled", 0)
    assert await ledger_kinds(pool, user_id) == [
        ("grant", 100, 0), ("reserve", -2, 2), ("refund", 2, -2)]
    await assert_invariants(pool, user_id)


async def test_a_cancel_committed_while_the_final_write_waits_for_the_job_wins(
    pool: Pool, settings: Settings
) -> None:
    # The final write reads the job, then waits for its row, held by the cancel's transaction:
    # it decides on the row the cancel left, not on the one it read first.
    batches = WorkerBatches(pool, settings, OWNER)
    job = await create_job(pool, num_outputs=2)
    claimed = await batches.claim(job.id)
    assert claimed is not None
    async with pool.acquire() as conn:
        cancel = conn.transaction()
        await cancel.start()
        await conn.execute(
            "UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1", job.id)
        write = asyncio.create_task(batches.finalize(
            Final(claimed, Outcome(JobStatus.SUCCEEDED), staged(claimed, 2))))
        while not await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
                " AND query LIKE '%genq_finalize%')"):
            assert not write.done()
            await asyncio.sleep(0.01)
        await cancel.commit()
    assert await write == "canceled"
    await assert_canceled_and_refunded(pool, job.id, job.user_id)
    await batches.drain()
