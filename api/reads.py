"""Reading one user's jobs and assets. Every query is scoped by user id, so another user's
row is simply not found (404), never forbidden."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from api.errors import AssetNotFound, JobNotFound
from api.pagination import encode_time_cursor
from api.serialize import asset_json, job_json
from shared.db import Connection
from shared.types import JobStatus
from sql import queries

JOB_STATUSES = tuple(JobStatus)


def parse_id(raw: str) -> uuid.UUID | None:
    """A path id as a UUID, or None if it is not one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def load_job(conn: Connection, user_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any]:
    """One job as JSON; :class:`JobNotFound` if the user has no such job."""
    row = await conn.fetchrow(queries["get_job"], job_id, user_id)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    assets = await conn.fetch(queries["list_job_assets"], user_id, [job_id])
    return job_json(row, assets)


async def list_jobs(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None on the last)."""
    created_at, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        queries["list_jobs"], user_id, status, created_at, last_id, limit + 1
    )
    page, more = rows[:limit], len(rows) > limit
    outputs: dict[uuid.UUID, list[Any]] = defaultdict(list)
    if page:
        for asset in await conn.fetch(
            queries["list_job_assets"], user_id, [r["id"] for r in page]
        ):
            outputs[asset["job_id"]].append(asset)
    next_cursor = encode_time_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return [job_json(r, outputs[r["id"]]) for r in page], next_cursor


async def load_asset(conn: Connection, user_id: uuid.UUID, asset_id: uuid.UUID) -> Any:
    """One unexpired asset row (with its storage key); :class:`AssetNotFound` otherwise."""
    row = await conn.fetchrow(queries["get_asset"], asset_id, user_id)
    if row is None:
        raise AssetNotFound(f"no asset {asset_id}")
    return row


async def list_assets(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of assets, newest first, and the next page's cursor."""
    created_at, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        queries["list_assets"], user_id, job_id, created_at, last_id, limit + 1
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_time_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return [asset_json(r) for r in page], next_cursor
