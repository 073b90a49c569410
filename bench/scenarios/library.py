"""The public feed and library search on a large library (1,000,000 rows, 100,000 of them
public; ``--quick``: 40,000 and 4,000).

Feed: genq's feed query as the API runs it (``feed_read``: keyset on ``user_library_feed_idx``, the
first page after ``infinity``, with each
item's variants, a thumbnail per item as every saved image has) for the first page and the 50th
page (by the cursor of the 49th), p50 and p99 over repeated reads; baseline: a bare indexed
``SELECT ... ORDER BY published_at DESC, id DESC LIMIT 50`` of the same rows and columns
(without the variants) at the same positions, in the same run (target: within 1.5x). The table
is vacuumed after the load (as autovacuum would, soon after), and genq's reads and the bare
ones alternate, one of each in turn, so that neither meets the machine busier than the other.
Search: ``list_library`` with ``q`` (full text on the prompt and title) for the user holding
the most rows; reported, no baseline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench import seed
from bench.env import BenchEnv
from bench.report import Row
from bench.stats import percentile
from shared.db import Pool
from shared.library import feed_read
from sql import queries

PAGE = 50
CHUNK = 50_000
WORDS = ["lighthouse", "dusk", "fox", "snow", "harbour", "kite", "dunes", "forest", "neon",
         "city", "rain", "desert", "rocket", "portrait", "river", "mountain", "garden", "robot",
         "ocean", "castle"]

# The feed's columns, without the variants genq adds to each item: the first page, and a page
# after a cursor, each written as plainly as it can be.
_BARE_COLUMNS = (
    "SELECT id, short_id, asset_type, mime_type, file_size_bytes, width, height,"
    " duration_seconds, prompt, model, title, tags, published_at, storage_key FROM user_library"
    " WHERE visibility = 'public' AND deleted_at IS NULL AND taken_down_at IS NULL"
)
BARE_FIRST = _BARE_COLUMNS + " ORDER BY published_at DESC, id DESC LIMIT $1"
BARE_AFTER = (_BARE_COLUMNS + " AND (published_at, id) < ($1, $2)"
              " ORDER BY published_at DESC, id DESC LIMIT $3")


async def _fill(pool: Pool, user_ids: list[uuid.UUID], rows: int) -> None:
    """``rows`` items over the users, one in ten public, prompts of three words, each with a
    thumbnail variant as a save records it; the count trigger is off while seeding (it is
    measured by the tests, not here). Then vacuumed and analyzed."""
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    await pool.execute("ALTER TABLE user_library DISABLE TRIGGER user_library_counts")
    # In chunks, each well within the pool's statement timeout.
    for start in range(1, rows + 1, CHUNK):
        await pool.execute(
            f"""
            INSERT INTO user_library (user_id, short_id, asset_type, storage_key,
                file_size_bytes, mime_type, prompt, model, visibility, published_at, created_at,
                variants)
            SELECT ($1::uuid[])[1 + g % cardinality($1::uuid[])],
                   substr(translate(encode(sha256(g::text::bytea), 'base64'), '+/=', '-_A'),
                          1, 11),
                   'image', 'library/bench/' || g || '.png', 1000, 'image/png',
                   ({words})[1 + g % 20] || ' ' || ({words})[1 + (g / 20) % 20] || ' '
                       || ({words})[1 + (g / 400) % 20],
                   'local/sketch',
                   CASE WHEN g % 10 = 0 THEN 'public' ELSE 'private' END,
                   CASE WHEN g % 10 = 0 THEN now() - make_interval(secs => $2 - g) END,
                   now() - make_interval(secs => $2 - g),
                   jsonb_build_object('thumb', jsonb_build_object(
                       'width', 256, 'height', 256, 'mime_type', 'image/webp',
                       'storage_key', 'library/bench/' || g || '.thumb.webp'))
            FROM generate_series($3::int, $4::int) AS g
            """, user_ids, rows, start, min(start + CHUNK - 1, rows))
    await pool.execute("ALTER TABLE user_library ENABLE TRIGGER user_library_counts")
    await pool.execute("VACUUM (ANALYZE) user_library")


WARMUP = 10


async def _timed(pool: Pool, sql: str, args: tuple[Any, ...], repeat: int) -> list[float]:
    """``repeat`` reads of one prepared statement, in ms (after a few untimed ones)."""
    return (await _alternating(pool, [(sql, args)], repeat))[0]


async def _alternating(pool: Pool, reads: list[tuple[str, tuple[Any, ...]]],
                       repeat: int) -> list[list[float]]:
    """``repeat`` rounds of one read of each prepared statement, in turn (the first of each
    round changing from round to round), on one connection; each read's time in ms."""
    times: list[list[float]] = [[] for _ in reads]
    async with pool.acquire() as conn:
        stmts = [(await conn.prepare(sql), args) for sql, args in reads]
        for round_ in range(-WARMUP, repeat):
            for i in range(len(stmts)):
                index = (i + round_) % len(stmts)
                stmt, args = stmts[index]
                started = time.perf_counter()
                found = await stmt.fetch(*args)
                if round_ >= 0:
                    times[index].append((time.perf_counter() - started) * 1000)
                if not found:
                    raise RuntimeError("bench query found nothing")
    return times


async def _cursor_at(pool: Pool, page: int) -> tuple[Any, Any]:
    """The (published_at, id) after which page ``page`` (1-based) starts, walked page by page."""
    after: tuple[Any, Any] = (None, None)
    for _ in range(page - 1):
        rows = (await pool.fetch(BARE_AFTER, after[0], after[1], PAGE) if after[0] is not None
                else await pool.fetch(BARE_FIRST, PAGE))
        after = (rows[-1]["published_at"], rows[-1]["id"])
    return after


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """Seed, then genq's queries and the bare ones, alternating, at the same positions."""
    total = 40_000 if quick else 1_000_000
    repeat = 50 if quick else 300
    pool = env.db()
    users = [u.id for u in await seed.users(pool, 10, 0)]
    await _fill(pool, users, total)
    public = await pool.fetchval("SELECT count(*) FROM user_library WHERE visibility = 'public'")
    rows: list[Row] = []
    for page in (1, 50):
        after = await _cursor_at(pool, page)
        genq_read = feed_read(None, None, after if page > 1 else None, PAGE + 1)
        bare_read = ((BARE_AFTER, (after[0], after[1], PAGE + 1)) if page > 1
                     else (BARE_FIRST, (PAGE + 1,)))
        genq, bare = await _alternating(pool, [genq_read, bare_read], repeat)
        for pct in (50, 99):
            g, b = percentile(genq, pct), percentile(bare, pct)
            rows.append(Row(
                "library", f"feed page {page}: p{pct} ms (genq feed query vs bare indexed "
                           f"SELECT LIMIT {PAGE})", g, b, "ms", better="lower", limit=1.5,
                target="<= 1.5x bare", notes={"rows": total, "public": public,
                                               "reads": repeat}))
    top = users[0]
    search = await _timed(pool, queries["list_library"], (
        top, None, None, None, None, None, None, "lighthouse fox", None, None, 21), repeat)
    for pct in (50, 99):
        rows.append(Row(
            "library", f"library search q (2 words, one user's {total // 10} of {total} rows): "
                       f"p{pct} ms", percentile(search, pct), None, "ms", better="lower",
            target="none (reported)", notes={"rows": total, "reads": repeat}))
    return rows
