"""Group commit in the worker: claims and final writes of jobs that reach them together go to
PostgreSQL in one statement. Each job still gets its own answer; a batch that fails writes
nothing and its jobs are finalized one by one; concurrent batches never deadlock on accounts."""

from __future__ import annotations

import asyncio
import random

import pytest
from structlog.testing import capture_logs

from shared.db import Pool
from shared.errors import GenqError
from shared.settings import Settings
from shared.types import JobStatus
from tests.factories import assert_invariants, create_job, funded_user, job_row, ledger_kinds
from worker import media
from worker.jobs import ClaimedJob, Final, Outcome, WorkerBatches, finalize_many
from worker.staging import StagedAsset

OWNER = "test-worker"


def staged(job: ClaimedJob, n: int) -> list[StagedAsset]:
    return [StagedAsset(i, f"{job.user_id}/{job.id}/{i}.png", 10, media.PNG, 1, 1, None)
            for i in range(n)]


async def test_concurrent_claims_each_get_their_job_and_duplicates_get_nothing(
    pool: Pool, settings: Settings
) -> None:
    batches = WorkerBatches(pool, settings, OWNER)
    jobs = [await create_job(pool, num_outputs=1) for _ in range(20)]
    ids = [j.id for j in jobs]
    # Every job delivered twice at once (arq's at-least-once): one claim each.
    claims = await asyncio.gather(*(batches.claim(i) for i in [*ids, *ids]))
    held = [c for c in claims if c is not None]
    assert sorted(c.id for c in held) == sorted(ids)
    assert all(c.attempt == 1 for c in held)
    for job_id in ids:
        row = await job_row(pool, job_id)
        assert (row["status"], row["attempt"], row["lease_owner"]) == ("running", 1, OWNER)
    # Nothing left to claim.
    assert await asyncio.gather(*(batches.claim(i) for i in ids)) == [None] * 20
    await batches.drain()


async def test_one_batch_answers_each_job(pool: Pool, settings: Settings) -> None:
    batches = WorkerBatches(pool, settings, OWNER)
    ok, failed, stale = [await create_job(pool, num_outputs=2) for _ in range(3)]
    claimed = {c.id: c for c in await asyncio.gather(
        *(batches.claim(j.id) for j in (ok, failed, stale))) if c is not None}
    # Another attempt took "stale" over: this attempt's write must not land.
    await pool.execute("UPDATE generation_jobs SET attempt = attempt + 1 WHERE id = $1", stale.id)

    held = list(await asyncio.gather(
        batches.finalize(Final(claimed[ok.id], Outcome(JobStatus.SUCCEEDED),
                               staged(claimed[ok.id], 1))),
        batches.finalize(Final(claimed[failed.id],
                               Outcome(JobStatus.FAILED, "model_failed", "no"), [])),
        batches.finalize(Final(claimed[stale.id], Outcome(JobStatus.SUCCEEDED),
                               staged(claimed[stale.id], 2))),
    ))
    assert held == ["succeeded", "failed", None]
    assert (await job_row(pool, ok.id))["status"] == "succeeded"
    assert (await job_row(pool, failed.id))["error_code"] == "model_failed"
    assert (await job_row(pool, stale.id))["status"] == "running"
    # 1 of 2 made: capture 1, refund 1. Failed: refund 2. Stale: still reserved.
    assert await ledger_kinds(pool, ok.user_id) == [
        ("grant", 100, 0), ("reserve", -2, 2), ("capture", 0, -1), ("refund", 1, -1)]
    assert await ledger_kinds(pool, failed.user_id) == [
        ("grant", 100, 0), ("reserve", -2, 2), ("refund", 2, -2)]
    assert (await assert_invariants(pool, stale.user_id)).reserved == 2
    await batches.drain()


async def test_a_failing_batch_writes_nothing_and_each_job_goes_alone(
    pool: Pool, settings: Settings
) -> None:
    batches = WorkerBatches(pool, settings, OWNER)
    jobs = [await create_job(pool, num_outputs=1) for _ in range(4)]
    claimed = [c for c in await asyncio.gather(*(batches.claim(j.id) for j in jobs))
               if c is not None]
    # The last one claims more outputs than were reserved: its settlement is refused, and
    # with it the whole statement. The other three still land, each alone.
    finals = [Final(c, Outcome(JobStatus.SUCCEEDED), staged(c, 1)) for c in claimed[:3]]
    finals.append(Final(claimed[3], Outcome(JobStatus.SUCCEEDED), staged(claimed[3], 3)))
    with capture_logs() as logs:
        results = await asyncio.gather(*(batches.finalize(f) for f in finals),
                                       return_exceptions=True)
    assert any(e["event"] == "finalize_batch_failed" for e in logs)
    assert results[:3] == ["succeeded"] * 3
    assert isinstance(results[3], GenqError)
    for job in jobs[:3]:
        assert (await job_row(pool, job.id))["status"] == "succeeded"
        assert await ledger_kinds(pool, job.user_id) == [
            ("grant", 100, 0), ("reserve", -1, 1), ("capture", 0, -1)]
    assert (await job_row(pool, jobs[3].id))["status"] == "running"
    assert (await assert_invariants(pool, jobs[3].user_id)).reserved == 1
    await batches.drain()


@pytest.mark.parametrize("workers", [3])
async def test_concurrent_batches_over_shared_accounts_never_deadlock(
    pool: Pool, settings: Settings, workers: int
) -> None:
    users = [await funded_user(pool, 1000) for _ in range(5)]
    jobs = [await create_job(pool, num_outputs=1, user_id=users[i % 5]) for i in range(150)]
    # Several worker processes' batches, each with jobs of every account, in random order.
    all_batches = [WorkerBatches(pool, settings, f"worker-{n}") for n in range(workers)]
    claimed = []
    for i, job in enumerate(jobs):
        claim = await all_batches[i % workers].claim(job.id)
        assert claim is not None
        claimed.append((all_batches[i % workers], claim))
    random.Random(7).shuffle(claimed)
    with capture_logs() as logs:
        held = list(await asyncio.gather(*(
            b.finalize(Final(c, Outcome(JobStatus.SUCCEEDED), staged(c, 1))) for b, c in claimed
        )))
    assert held == ["succeeded"] * 150
    assert [e for e in logs if e["event"] == "finalize_batch_failed"] == []
    for user in users:
        account = await assert_invariants(pool, user)
        assert (account.balance, account.reserved) == (1000 - 30, 0)
    assert await pool.fetchval("SELECT count(*) FROM workspace_assets") == 150
    for b in all_batches:
        await b.drain()


async def test_one_batch_settles_many_jobs_of_one_account_in_item_order(
    pool: Pool, settings: Settings
) -> None:
    user = await funded_user(pool, 100)
    jobs = [await create_job(pool, num_outputs=4, user_id=user) for _ in range(4)]
    batches = WorkerBatches(pool, settings, OWNER)
    c = [await batches.claim(j.id) for j in jobs]
    assert all(x is not None for x in c)
    made_all, made_some, failed, canceled = (x for x in c if x is not None)
    # A cancel requested before the final write wins over the success the worker brings.
    await pool.execute("UPDATE generation_jobs SET cancel_requested_at = now() WHERE id = $1",
                       canceled.id)
    first = Final(made_some, Outcome(JobStatus.SUCCEEDED), staged(made_some, 3))
    statuses = await finalize_many(pool, settings, [
        Final(made_all, Outcome(JobStatus.SUCCEEDED), staged(made_all, 4)),
        first,
        Final(failed, Outcome(JobStatus.FAILED, "model_failed", "no"), []),
        Final(canceled, Outcome(JobStatus.SUCCEEDED), staged(canceled, 4)),
        first,  # the same final write twice: it lands once
    ])
    assert statuses == ["succeeded", "succeeded", "failed", "canceled", None]

    # 100 granted, 16 held; then, in item order: capture 4; capture 3 and refund 1;
    # refund 4; refund 4. Each entry's balance_after is the balance it left.
    rows = await pool.fetch(
        "SELECT kind, amount, reserved_delta, balance_after FROM credit_ledger"
        " WHERE user_id = $1 ORDER BY id", user)
    assert [tuple(r) for r in rows] == [
        ("grant", 100, 0, 100),
        ("reserve", -4, 4, 96), ("reserve", -4, 4, 92), ("reserve", -4, 4, 88),
        ("reserve", -4, 4, 84),
        ("capture", 0, -4, 84),
        ("capture", 0, -3, 84), ("refund", 1, -1, 85),
        ("refund", 4, -4, 89),
        ("refund", 4, -4, 93),
    ]
    account = await assert_invariants(pool, user)
    assert (account.balance, account.reserved) == (93, 0)
    statuses_now = await pool.fetch(
        "SELECT r.status, r.captured, r.refunded FROM generation_jobs j"
        " JOIN credit_reservations r ON r.id = j.reservation_id WHERE j.id = ANY($1::uuid[])"
        " ORDER BY array_position($1::uuid[], j.id)", [j.id for j in jobs])
    assert [tuple(r) for r in statuses_now] == [
        ("captured", 4, 0), ("captured", 3, 1), ("refunded", 0, 4), ("refunded", 0, 4)]
    assets = await pool.fetch(
        "SELECT job_id, count(*) AS n FROM workspace_assets GROUP BY job_id")
    assert {r["job_id"]: r["n"] for r in assets} == {made_all.id: 4, made_some.id: 3}
    assert (await job_row(pool, canceled.id))["error_code"] == "canceled"
    await batches.drain()
