"""Test helpers: make jobs the way the intake API does, and check the ledger invariants."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import ledger
from shared.catalog import _parse, sync_catalog
from shared.db import Pool
from shared.users import create_user
from sql import queries


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    user_id: uuid.UUID
    reservation_id: uuid.UUID
    price: int
    num_outputs: int


async def add_models(pool: Pool, toml_text: str) -> None:
    """Add catalog models to this test's database (the built-in ones stay)."""
    from shared.catalog import load_catalog

    specs = {s.key: s for s in load_catalog(None)}
    for spec in _parse(toml_text, "test models"):
        specs[spec.key] = spec
    async with pool.acquire() as conn:
        await sync_catalog(conn, list(specs.values()))


async def new_user(pool: Pool, credits: int) -> uuid.UUID:
    async with pool.acquire() as conn:
        user = await create_user(conn, f"{uuid.uuid4().hex}@example.com")
    await ledger.grant(pool, user.id, credits, idempotency_key=f"seed:{user.id}")
    return user.id


async def create_job(
    pool: Pool,
    *,
    model: str = "local/sketch",
    prompt: str = "a red fox in the snow",
    num_outputs: int = 2,
    seed: int | None = 42,
    params: dict[str, Any] | None = None,
    user_id: uuid.UUID | None = None,
    credits: int = 100,
    max_attempts: int = 3,
) -> NewJob:
    """As the API does: the job row and its reservation in one transaction (status queued)."""
    if user_id is None:
        user_id = await new_user(pool, credits)
    job_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        m = await conn.fetchrow(queries["get_model"], model)
        assert m is not None, model
        merged = {**m["params"], **(params or {})}
        await conn.execute(
            "INSERT INTO generation_jobs (id, user_id, model, provider, prompt, num_outputs, "
            "params, seed, price_per_output, max_attempts, enqueued_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
            job_id, user_id, model, m["provider"], prompt, num_outputs, merged, seed,
            m["price_per_output"], max_attempts,
        )
        r = await ledger.reserve(
            conn, user_id, m["price_per_output"] * num_outputs,
            expires_at=datetime.now(UTC) + timedelta(hours=6),
            idempotency_key=f"job:{job_id}", job_id=job_id,
        )
        await conn.execute(
            "UPDATE generation_jobs SET reservation_id = $2 WHERE id = $1", job_id, r.id
        )
    return NewJob(job_id, user_id, r.id, m["price_per_output"], num_outputs)


async def job_row(pool: Pool, job_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM generation_jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row.items())


async def assets_of(pool: Pool, job_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT * FROM workspace_assets WHERE job_id = $1 ORDER BY asset_index", job_id
    )
    return [dict(r.items()) for r in rows]


async def ledger_kinds(pool: Pool, user_id: uuid.UUID) -> list[tuple[str, int, int]]:
    """(kind, amount, reserved_delta), oldest first."""
    rows = await pool.fetch(
        "SELECT kind, amount, reserved_delta FROM credit_ledger WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [(r["kind"], r["amount"], r["reserved_delta"]) for r in rows]


async def assert_invariants(pool: Pool, user_id: uuid.UUID) -> ledger.Account:
    """balance >= 0, balance == sum(ledger.amount), reserved == open reservations."""
    account = await ledger.get_account(pool, user_id)
    sums = await pool.fetchrow(queries["ledger_sums"], user_id)
    assert sums is not None
    assert account.balance >= 0
    assert account.balance == sums["amount"]
    assert account.reserved == sums["reserved"]
    open_total = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM credit_reservations "
        "WHERE user_id = $1 AND status = 'open'", user_id,
    )
    assert account.reserved == open_total
    return account
