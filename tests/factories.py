"""Rows and files for tests, made through the same code paths genq uses where one exists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from shared import ledger
from shared.db import Pool
from shared.storage import LocalStorage, asset_key
from shared.users import create_user


async def funded_user(pool: Pool, credits: int) -> uuid.UUID:
    """A new user holding ``credits``."""
    async with pool.acquire() as conn:
        user = await create_user(conn, f"{uuid.uuid4().hex}@example.com")
    if credits:
        await ledger.grant(pool, user.id, credits, idempotency_key=f"seed:{user.id}")
    return user.id


async def queued_job(
    pool: Pool,
    user_id: uuid.UUID,
    *,
    model: str = "local/sketch",
    num_outputs: int = 1,
    reservation_ttl_s: float = 3600,
    created_ago_s: float = 0,
) -> uuid.UUID:
    """A ``queued`` job with its reservation, as the intake service creates it."""
    job_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        m = await conn.fetchrow(
            "SELECT provider, price_per_output, params FROM models WHERE key = $1", model
        )
        assert m is not None
        created = datetime.now(UTC) - timedelta(seconds=created_ago_s)
        await conn.execute(
            "INSERT INTO generation_jobs (id, user_id, model, provider, prompt, num_outputs,"
            " params, price_per_output, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            job_id, user_id, model, m["provider"], f"test prompt {job_id}", num_outputs,
            m["params"], m["price_per_output"], created,
        )
        r = await ledger.reserve(
            conn, user_id, m["price_per_output"] * num_outputs,
            expires_at=datetime.now(UTC) + timedelta(seconds=reservation_ttl_s),
            idempotency_key=f"job:{job_id}", job_id=job_id,
        )
        await conn.execute(
            "UPDATE generation_jobs SET reservation_id = $2 WHERE id = $1", job_id, r.id
        )
    return job_id


async def stored_assets(
    pool: Pool,
    storage: LocalStorage,
    user_id: uuid.UUID,
    job_id: uuid.UUID,
    expires_in_s: list[float],
) -> list[str]:
    """One asset row and file per entry; entry = seconds until expiry (negative: expired)."""
    now = datetime.now(UTC)
    rows = []
    keys = []
    for index, delta in enumerate(expires_in_s):
        key = asset_key(user_id, job_id, index, "png")
        storage.write_bytes(key, b"\x89PNG\r\n\x1a\n" + index.to_bytes(4, "big"))
        keys.append(key)
        rows.append((
            uuid.uuid4(), user_id, job_id, index, "image", key, 12, "image/png",
            now - timedelta(days=7), now + timedelta(seconds=delta),
        ))
    await pool.copy_records_to_table(
        "workspace_assets", records=rows,
        columns=["id", "user_id", "job_id", "asset_index", "asset_type", "temp_storage_path",
                 "file_size_bytes", "mime_type", "created_at", "expires_at"],
    )
    return keys


def files_on_disk(storage: LocalStorage) -> set[str]:
    """Every stored file's key."""
    if not storage.root.exists():
        return set()
    return {
        p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if p.is_file()
    }
