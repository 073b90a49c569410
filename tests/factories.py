"""Rows and files for tests, made the way genq makes them, and the ledger invariants."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import ledger
from shared.catalog import ModelSpec, load_catalog, sync_catalog
from shared.db import Connection, Pool
from shared.entries import parse_entries
from shared.storage import LocalStorage, Storage, asset_key
from shared.users import create_user
from sql import queries


@dataclass(frozen=True)
class Reservation:
    """An open reservation as :func:`reserve` made it."""

    id: uuid.UUID
    entry_id: int
    balance_after: int
    replayed: bool


# Production reserves inside genq_submit (sql/migrations/0005_submit.sql); tests that need a
# hold of their own call genq_reserve as genq_submit does.
RESERVE_SQL = (
    "SELECT reservation_id, entry_id, balance_after, replayed"
    " FROM genq_reserve($1, $2, $3, $4, $5)"
)


async def reserve(
    db: Connection | Pool,
    user_id: uuid.UUID,
    amount: int,
    *,
    expires_at: datetime,
    idempotency_key: str | None = None,
    job_id: uuid.UUID | None = None,
) -> Reservation:
    """Hold ``amount`` credits until ``expires_at`` (``genq_reserve``), its refusals raised as
    the domain errors production sees (:class:`InsufficientCredits`, ...)."""
    row = await ledger.fetchrow(db, RESERVE_SQL, user_id, amount, idempotency_key, job_id,
                                expires_at)
    return Reservation(
        row["reservation_id"], row["entry_id"], row["balance_after"], row["replayed"]
    )


@dataclass(frozen=True)
class NewJob:
    """A queued job as :func:`create_job` made it."""

    id: uuid.UUID
    user_id: uuid.UUID
    reservation_id: uuid.UUID
    price: int
    num_outputs: int


async def add_models(pool: Pool, toml_text: str) -> None:
    """Add catalog models to this test's database (the built-in ones stay)."""
    specs = {s.key: s for s in load_catalog(None)}
    for spec in parse_entries(ModelSpec, "models", "key", toml_text, "test models"):
        specs[spec.key] = spec
    async with pool.acquire() as conn:
        await sync_catalog(conn, list(specs.values()))


async def funded_user(pool: Pool, credits: int) -> uuid.UUID:
    """A new user holding ``credits``."""
    async with pool.acquire() as conn:
        user = await create_user(conn, f"{uuid.uuid4().hex}@example.com")
    if credits:
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
    reservation_ttl_s: float = 6 * 3600,
    created_ago_s: float = 0,
) -> NewJob:
    """As the API does: the job row and its reservation in one transaction (status queued).

    Without ``user_id`` a new user holding ``credits`` is made.
    """
    if user_id is None:
        user_id = await funded_user(pool, credits)
    job_id = uuid.uuid4()
    created = datetime.now(UTC) - timedelta(seconds=created_ago_s)
    async with pool.acquire() as conn, conn.transaction():
        m = await conn.fetchrow(queries["get_model"], model)
        assert m is not None, model
        merged = {**m["params"], **(params or {})}
        await conn.execute(
            "INSERT INTO generation_jobs (id, user_id, model, provider, prompt, num_outputs, "
            "params, seed, price_per_output, max_attempts, created_at, updated_at, enqueued_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)",
            job_id, user_id, model, m["provider"], prompt, num_outputs, merged, seed,
            m["price_per_output"], max_attempts, created,
        )
        r = await reserve(
            conn, user_id, m["price_per_output"] * num_outputs,
            expires_at=datetime.now(UTC) + timedelta(seconds=reservation_ttl_s),
            idempotency_key=f"job:{job_id}", job_id=job_id,
        )
        await conn.execute(
            "UPDATE generation_jobs SET reservation_id = $2 WHERE id = $1", job_id, r.id
        )
    return NewJob(job_id, user_id, r.id, m["price_per_output"], num_outputs)


async def queued_job(
    pool: Pool, user_id: uuid.UUID, *, num_outputs: int = 1, **kwargs: Any
) -> uuid.UUID:
    """The id of a new queued job of ``user_id`` (see :func:`create_job`)."""
    job = await create_job(pool, user_id=user_id, num_outputs=num_outputs, **kwargs)
    return job.id


async def job_row(pool: Pool, job_id: uuid.UUID) -> dict[str, Any]:
    """The job's row."""
    row = await pool.fetchrow("SELECT * FROM generation_jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row.items())


async def assets_of(pool: Pool, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's asset rows, by index."""
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
    """balance >= 0, balance == sum(ledger.amount), reserved == sum(reserved_delta) == open
    reservations, and the newest entry's balance_after is the balance."""
    account = await ledger.get_account(pool, user_id)
    sums = await pool.fetchrow(queries["ledger_sums"], user_id)
    assert sums is not None
    assert account.balance >= 0
    assert account.reserved >= 0
    assert account.balance == sums["amount"]
    assert account.reserved == sums["reserved"]
    open_total = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM credit_reservations "
        "WHERE user_id = $1 AND status = 'open'", user_id,
    )
    assert account.reserved == open_total
    last = await pool.fetchval(
        "SELECT balance_after FROM credit_ledger WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
        user_id,
    )
    if last is not None:
        assert last == account.balance
    return account


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
        columns=["id", "user_id", "job_id", "asset_index", "asset_type", "storage_key",
                 "file_size_bytes", "mime_type", "created_at", "expires_at"],
    )
    return keys


async def stored_objects(
    pool: Pool,
    storage: Storage,
    user_id: uuid.UUID,
    job_id: uuid.UUID,
    expires_in_s: list[float],
) -> list[str]:
    """:func:`stored_assets` on any backend (written through the storage interface)."""
    keys = []
    for index in range(len(expires_in_s)):
        key = asset_key(user_id, job_id, index, "png")
        await storage.put_bytes(key, b"\x89PNG\r\n\x1a\n" + index.to_bytes(4, "big"))
        keys.append(key)
    await _asset_rows(pool, user_id, job_id, keys, expires_in_s)
    return keys


async def _asset_rows(pool: Pool, user_id: uuid.UUID, job_id: uuid.UUID, keys: list[str],
                      expires_in_s: list[float]) -> None:
    now = datetime.now(UTC)
    rows = [
        (uuid.uuid4(), user_id, job_id, index, "image", key, 12, "image/png",
         now - timedelta(days=7), now + timedelta(seconds=delta))
        for index, (key, delta) in enumerate(zip(keys, expires_in_s, strict=True))
    ]
    await pool.copy_records_to_table(
        "workspace_assets", records=rows,
        columns=["id", "user_id", "job_id", "asset_index", "asset_type", "storage_key",
                 "file_size_bytes", "mime_type", "created_at", "expires_at"],
    )


def files_on_disk(storage: LocalStorage) -> set[str]:
    """Every stored file's key."""
    if not storage.root.exists():
        return set()
    return {
        p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if p.is_file()
    }


def local(storage: Storage) -> LocalStorage:
    """``storage`` as the local folder it is in this test (to look at its files)."""
    assert isinstance(storage, LocalStorage), storage
    return storage
