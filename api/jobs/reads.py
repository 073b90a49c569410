"""Reading one user's jobs. Every query is scoped by user id, so another user's job is simply
not found (404), never forbidden."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from api.assets.reads import Sign, signed_urls
from api.errors import JobNotFound
from api.jobs.models import Job
from api.pagination import time_page
from shared.db import Connection, Pool
from shared.types import JobStatus
from sql import queries

JOB_STATUSES = tuple(JobStatus)


async def load_job(
    conn: Connection, user_id: uuid.UUID, job_id: uuid.UUID, *, sign: Sign
) -> Job:
    """One job; :class:`JobNotFound` if the user has no such job."""
    row = await conn.fetchrow(queries["get_job"], job_id, user_id)
    if row is None:
        raise JobNotFound.of(job_id)
    assets = await conn.fetch(queries["list_job_assets"], [user_id], [job_id])
    return Job.from_row(row, assets, await signed_urls(sign, assets))


async def load_new_jobs(
    pool: Pool, jobs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> list[Job | BaseException]:
    """Jobs just accepted (they have no outputs yet), each a (job id, user id), in one query;
    :class:`JobNotFound` in place of one the user has no such job."""
    rows = await pool.fetch(queries["get_new_jobs"], [j for j, _ in jobs], [u for _, u in jobs])
    found = {(row["id"], row["user_id"]): row for row in rows}
    out: list[Job | BaseException] = []
    for job_id, user_id in jobs:
        row = found.get((job_id, user_id))
        out.append(JobNotFound.of(job_id) if row is None else Job.from_row(row))
    return out


async def list_jobs(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
    sign: Sign,
) -> tuple[list[Job], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None on the last)."""
    created_at, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        queries["list_jobs"], user_id, status, created_at, last_id, limit + 1
    )
    page, next_cursor = time_page(rows, limit)
    outputs: dict[uuid.UUID, list[Any]] = defaultdict(list)
    if page:
        for asset in await conn.fetch(
            queries["list_job_assets"], [user_id], [r["id"] for r in page]
        ):
            outputs[asset["job_id"]].append(asset)
    urls = await signed_urls(sign, (a for rows in outputs.values() for a in rows))
    return [Job.from_row(r, outputs[r["id"]], urls) for r in page], next_cursor
