"""Rows, files and queue entries for the scenarios, made through genq's own queries where the
intake or the worker would make them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from arq.connections import ArqRedis
from arq.jobs import Job

from api.jobs.intake import SUBMIT_BATCH, SubmitItem
from api.jobs.models import JobCreate
from shared import ledger
from shared.catalog import load_rules
from shared.db import Pool
from shared.queue import GENERATION_FUNCTION, RESULT_KEY_PREFIX
from shared.storage import asset_key
from shared.types import AssetType, JobStatus
from shared.users import NewUser, create_user
from sql import queries

T = TypeVar("T")

# A 1x1 image: the output is as small as the local provider makes, so the worker's own
# bookkeeping dominates.
TINY_PARAMS = {"width": 1, "height": 1, "format": "png"}
SEED_CONCURRENCY = 16


async def gather_limited(items: Iterable[T], fn: Callable[[T], Awaitable[Any]],
                         limit: int = SEED_CONCURRENCY) -> list[Any]:
    """``fn`` over ``items`` with at most ``limit`` running at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def users(pool: Pool, n: int, credits: int) -> list[NewUser]:
    """``n`` users with an API key and ``credits`` each."""
    async def make(_: int) -> NewUser:
        async with pool.acquire() as conn:
            user = await create_user(conn, f"{uuid.uuid4().hex}@bench.example")
        if credits:
            await ledger.grant(pool, user.id, credits, idempotency_key=f"bench:{user.id}")
        return user

    return await gather_limited(range(n), make)


async def submit_batches(pool: Pool, user_ids: list[uuid.UUID], n: int,
                         params: dict[str, Any], model: str = "local/sketch",
                         batch: int = SUBMIT_BATCH) -> list[list[dict[str, Any]]]:
    """The items of ``n`` new jobs spread over ``user_ids``, in ``submit_jobs`` batches of
    ``batch``, checked and priced as the intake checks them."""
    async with pool.acquire() as conn:
        rules = (await load_rules(conn))[model]
    items = [
        SubmitItem.checked(uuid.uuid4(), user_ids[i % len(user_ids)],
                           JobCreate(model=model, prompt=f"bench prompt {i}", params=params),
                           None, None, rules)
        for i in range(n)
    ]
    return [[item.payload(i) for i, item in enumerate(items[start:start + batch])]
            for start in range(0, n, batch)]


async def submit(conn: Any, batch: list[dict[str, Any]]) -> None:
    """One ``submit_jobs`` batch, every item accepted (else RuntimeError)."""
    rows = await conn.fetch(queries["submit_jobs"], batch, 3, 86400.0, 3600.0)
    refused = [r["error_message"] for r in rows if r["error_state"] is not None]
    if refused:
        raise RuntimeError(f"seed: submissions refused: {refused[:3]}")


async def queued_jobs(pool: Pool, user_ids: list[uuid.UUID], n: int,
                      params: dict[str, Any], model: str = "local/sketch") -> list[uuid.UUID]:
    """``n`` queued jobs with their reservations, spread over ``user_ids``, not yet enqueued:
    the rows the intake writes, with the same query."""
    batches = await submit_batches(pool, user_ids, n, params, model)
    await gather_limited(batches, lambda batch: submit(pool, batch))
    return [uuid.UUID(item["job"]) for batch in batches for item in batch]


async def enqueue_at(redis: ArqRedis, queue: str, calls: list[tuple[str, str, tuple[Any, ...]]],
                     lead_s: float) -> float:
    """Enqueue ``(job id, function, args)`` calls all due at one moment ``lead_s`` from now, so
    the worker sees the whole batch at once; returns that moment (epoch seconds)."""
    due = time.time() + lead_s
    when = datetime.fromtimestamp(due, UTC)

    async def put(call: tuple[str, str, tuple[Any, ...]]) -> None:
        job_id, function, args = call
        job = await redis.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue,
                                      _defer_until=when)
        assert job is not None, f"job {job_id} was already enqueued"

    await gather_limited(calls, put, limit=32)
    if time.time() > due:
        raise RuntimeError(f"enqueueing took longer than the {lead_s} s lead; raise it")
    return due


def generation_calls(job_ids: list[uuid.UUID]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """The arq calls the intake makes for these jobs."""
    return [(str(j), GENERATION_FUNCTION, (str(j),)) for j in job_ids]


# The figures come from the stored finish times, not from when a poll saw them, so polling
# slowly costs no precision; polling 2,000 ids every 50 ms cost the database or Redis under
# test as much CPU as the jobs themselves.
POLL_S = 0.5


async def wait_jobs(pool: Pool, job_ids: list[uuid.UUID], timeout_s: float,
                    poll_s: float = POLL_S) -> dict[str, Any]:
    """Wait until every job is terminal; their statuses and the last ``finished_at``."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS done,"
            " max(extract(epoch FROM finished_at))::float8 AS last"
            " FROM generation_jobs WHERE id = ANY($1::uuid[])", job_ids,
        )
        assert row is not None
        if row["done"] == len(job_ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {row['done']} of {len(job_ids)} jobs finished")
        await asyncio.sleep(poll_s)
    statuses = {
        r["status"]: r["n"] for r in await pool.fetch(
            "SELECT status, count(*) AS n FROM generation_jobs WHERE id = ANY($1::uuid[])"
            " GROUP BY status", job_ids)
    }
    return {"last_finished": row["last"], "statuses": statuses}


async def wait_arq(redis: ArqRedis, queue: str, job_ids: list[str], timeout_s: float,
                   poll_s: float = POLL_S) -> dict[str, Any]:
    """Wait until arq holds a result for every job; the last ``finish_time`` (epoch seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for jid in job_ids:
                pipe.exists(RESULT_KEY_PREFIX + jid)
            done = sum(await pipe.execute())
        if done == len(job_ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {len(job_ids)} arq jobs finished")
        await asyncio.sleep(poll_s)
    infos = await gather_limited(
        job_ids, lambda jid: Job(jid, redis, _queue_name=queue).result_info(), limit=32
    )
    ok = sum(1 for i in infos if i is not None and i.success)
    last = max(i.finish_time.timestamp() for i in infos if i is not None)
    return {"last_finished": last, "statuses": {"succeeded": ok, "other": len(infos) - ok}}


async def expired_assets(pool: Pool, storage_dir: Path, user_ids: list[uuid.UUID], n: int,
                         per_job: int = 4) -> list[uuid.UUID]:
    """``n`` expired workspace assets (rows and 12-byte files), ``per_job`` to a finished job."""
    now = datetime.now(UTC)
    jobs = []
    assets = []
    for j in range((n + per_job - 1) // per_job):
        job_id, user_id = uuid.uuid4(), user_ids[j % len(user_ids)]
        jobs.append((job_id, user_id, "local/sketch", "local", JobStatus.SUCCEEDED, "bench",
                     per_job, 0, now - timedelta(days=8), now - timedelta(days=8)))
        for index in range(min(per_job, n - j * per_job)):
            key = asset_key(user_id, job_id, index, "png")
            path = storage_dir / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + index.to_bytes(4, "big"))
            assets.append((uuid.uuid4(), user_id, job_id, index, AssetType.IMAGE, key, 12,
                           "image/png", now - timedelta(days=8), now - timedelta(days=1)))
    await pool.copy_records_to_table(
        "generation_jobs", records=jobs,
        columns=["id", "user_id", "model", "provider", "status", "prompt", "num_outputs",
                 "price_per_output", "created_at", "finished_at"],
    )
    await pool.copy_records_to_table(
        "workspace_assets", records=assets,
        columns=["id", "user_id", "job_id", "asset_index", "asset_type", "storage_key",
                 "file_size_bytes", "mime_type", "created_at", "expires_at"],
    )
    return [a[0] for a in assets]
