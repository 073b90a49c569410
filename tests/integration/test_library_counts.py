"""The library's counters are kept by the database: a collection's asset_count and a user's
library bytes stay exact under concurrent adds, moves, deletes, soft deletes and restores; a save
past the storage quota writes nothing."""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid

import asyncpg

from shared.db import Pool
from tests.factories import create_job, funded_user

USERS = 3
COLLECTIONS = 10
OPERATIONS = 1000


def _short_id() -> str:
    return secrets.token_urlsafe(8)


async def _add_item(pool: Pool, user: uuid.UUID, collection: uuid.UUID | None,
                    size: int) -> uuid.UUID:
    item: uuid.UUID = await pool.fetchval(
        "INSERT INTO user_library (user_id, short_id, asset_type, storage_key, file_size_bytes,"
        " mime_type, collection_id) VALUES ($1, $2, 'image', $3, $4, 'image/png', $5)"
        " RETURNING id",
        user, _short_id(), f"library/{user}/{uuid.uuid4()}.png", size, collection,
    )
    return item


async def _counts(pool: Pool) -> tuple[dict[uuid.UUID, tuple[int, int]],
                                       dict[uuid.UUID, tuple[int, int]]]:
    """Per collection (kept count, real count) and per user (kept bytes, real bytes)."""
    collections = await pool.fetch(
        "SELECT c.id, c.asset_count, (SELECT count(*) FROM user_library l"
        " WHERE l.collection_id = c.id AND l.deleted_at IS NULL) AS real FROM user_collections c"
    )
    users = await pool.fetch(
        "SELECT u.user_id, u.bytes_used, (SELECT coalesce(sum(l.file_size_bytes), 0)"
        " FROM user_library l WHERE l.user_id = u.user_id AND l.deleted_at IS NULL) AS real"
        " FROM library_usage u"
    )
    return (
        {r["id"]: (r["asset_count"], r["real"]) for r in collections},
        {r["user_id"]: (r["bytes_used"], r["real"]) for r in users},
    )


async def test_asset_count_and_bytes_stay_exact_under_concurrent_changes(pool: Pool) -> None:
    rng = random.Random(14)
    users = [await funded_user(pool, 0) for _ in range(USERS)]
    colls: dict[uuid.UUID, list[uuid.UUID]] = {u: [] for u in users}
    for i in range(COLLECTIONS):
        owner = users[i % USERS]
        cid = await pool.fetchval(
            "INSERT INTO user_collections (user_id, name) VALUES ($1, $2) RETURNING id",
            owner, f"collection {i}",
        )
        colls[owner].append(cid)
    items: list[tuple[uuid.UUID, uuid.UUID]] = []
    for _ in range(60):
        owner = rng.choice(users)
        items.append((owner, await _add_item(pool, owner, rng.choice(colls[owner]), 100)))

    async def op(n: int) -> None:
        r = random.Random(n)
        kind = r.choice(["add", "move", "move", "delete", "restore", "purge", "leave"])
        owner, item = r.choice(items)
        target = r.choice([*colls[owner], None])
        if kind == "add":
            new = await _add_item(pool, owner, target, r.randint(1, 1000))
            items.append((owner, new))
        elif kind == "move":
            await pool.execute(
                "UPDATE user_library SET collection_id = $2, updated_at = now() WHERE id = $1",
                item, target,
            )
        elif kind == "delete":
            await pool.execute(
                "UPDATE user_library SET deleted_at = now() WHERE id = $1"
                " AND deleted_at IS NULL", item,
            )
        elif kind == "restore":
            await pool.execute("UPDATE user_library SET deleted_at = NULL WHERE id = $1", item)
        elif kind == "purge":
            await pool.execute("DELETE FROM user_library WHERE id = $1", item)
        else:
            # A move and a soft delete in one statement.
            await pool.execute(
                "UPDATE user_library SET collection_id = $2, deleted_at = CASE WHEN"
                " deleted_at IS NULL THEN now() END WHERE id = $1", item, target,
            )

    await asyncio.gather(*(op(n) for n in range(OPERATIONS)))
    # Deleting a collection keeps its items, taken out of it; the others' counts stay exact.
    await pool.execute("DELETE FROM user_collections WHERE id = $1", colls[users[0]][0])

    collections, usage = await _counts(pool)
    assert len(collections) == COLLECTIONS - 1
    assert sum(real for _, real in collections.values()) > 0
    assert {cid: kept for cid, (kept, _) in collections.items()} == {
        cid: real for cid, (_, real) in collections.items()
    }
    assert set(usage) == set(users)
    assert {u: kept for u, (kept, _) in usage.items()} == {
        u: real for u, (_, real) in usage.items()
    }


async def test_an_item_cannot_join_another_users_collection(pool: Pool) -> None:
    owner, other = await funded_user(pool, 0), await funded_user(pool, 0)
    theirs = await pool.fetchval(
        "INSERT INTO user_collections (user_id, name) VALUES ($1, 'theirs') RETURNING id", other
    )
    item = await _add_item(pool, owner, None, 10)
    try:
        await pool.execute("UPDATE user_library SET collection_id = $2 WHERE id = $1",
                           item, theirs)
    except asyncpg.ForeignKeyViolationError:
        pass
    else:  # pragma: no cover - the failure message
        raise AssertionError("an item joined another user's collection")
    assert await pool.fetchval("SELECT asset_count FROM user_collections WHERE id = $1",
                               theirs) == 0


SAVE_SQL = (
    "SELECT outcome, item_id FROM genq_library_save($1, $2, $3, $4, '{}'::jsonb, NULL,"
    " '{}'::text[], NULL, false, 'private', $5)"
)


async def _assets(pool: Pool, user: uuid.UUID, count: int, size: int,
                  expires_in_s: float = 3600) -> list[uuid.UUID]:
    job = await create_job(pool, user_id=user, num_outputs=1)
    ids = [uuid.uuid4() for _ in range(count)]
    await pool.executemany(
        "INSERT INTO workspace_assets (id, user_id, job_id, asset_index, asset_type,"
        " storage_key, file_size_bytes, mime_type, expires_at)"
        " VALUES ($1, $2, $3, $4, 'image', $5, $6, 'image/png',"
        " now() + make_interval(secs => $7))",
        [(a, user, job.id, i, f"assets/{a}.png", size, expires_in_s)
         for i, a in enumerate(ids)],
    )
    return ids


async def test_concurrent_saves_past_the_quota_accept_only_what_fits(pool: Pool) -> None:
    user = await funded_user(pool, 100)
    assets = await _assets(pool, user, 50, 1000)
    quota = 17_500  # 17 saves of 1000 bytes fit

    async def save(asset: uuid.UUID) -> str:
        row = await pool.fetchrow(SAVE_SQL, user, asset, _short_id(),
                                  f"library/{user}/{asset}.png", quota)
        assert row is not None
        outcome: str = row["outcome"]
        return outcome

    outcomes = await asyncio.gather(*(save(a) for a in assets))
    assert outcomes.count("created") == 17
    assert outcomes.count("quota") == 33
    assert await pool.fetchval(
        "SELECT sum(file_size_bytes) FROM user_library WHERE user_id = $1", user) == 17_000
    assert await pool.fetchval(
        "SELECT bytes_used FROM library_usage WHERE user_id = $1", user) == 17_000


async def test_concurrent_saves_of_one_asset_make_one_item(pool: Pool) -> None:
    user = await funded_user(pool, 100)
    (asset,) = await _assets(pool, user, 1, 500)
    rows = await asyncio.gather(*(
        pool.fetchrow(SAVE_SQL, user, asset, _short_id(), f"library/{user}/{asset}.png", 10**9)
        for _ in range(20)
    ))
    outcomes = sorted(r["outcome"] for r in rows if r is not None)
    assert outcomes == ["created"] + ["existing"] * 19
    assert len({r["item_id"] for r in rows if r is not None}) == 1
    assert await pool.fetchval(
        "SELECT count(*) FROM user_library WHERE user_id = $1", user) == 1


async def test_a_foreign_or_expired_asset_is_not_saved(pool: Pool) -> None:
    user, other = await funded_user(pool, 100), await funded_user(pool, 100)
    (expired,) = await _assets(pool, user, 1, 500, expires_in_s=-1)
    (foreign,) = await _assets(pool, other, 1, 500)
    for asset in (expired, foreign):
        row = await pool.fetchrow(SAVE_SQL, user, asset, _short_id(), "library/x.png", 10**9)
        assert row is not None and row["outcome"] == "not_found"
    assert await pool.fetchval("SELECT count(*) FROM user_library") == 0
