"""Media: how fast variants are made, and what they cost the worker pipeline.

- **thumbnails**: ``n`` stored 1024 x 1024 PNG outputs get their variants (a 256 px WebP
  ``thumb``; no ``web``, the image is not larger than 1024 px) the way the worker makes them:
  ``Stager.add_variants``, in its thread pool of ``GENQ_MEDIA_THREADS`` threads, each variant
  written atomically (fsync) through the storage. Baseline: Pillow doing the same open, decode,
  resize and WebP encode in a bare loop in one thread, writing plain files (no fsync), in the
  same run; and the same bare loop in as many threads as the worker's pool.
- **pipeline**: ``n`` jobs of ``local/sketch`` at 1024 x 1024 through one ``genq worker``
  process with variants on, against the same with ``GENQ_VARIANTS_ENABLED=false``, each
  enqueued due at one moment; jobs / (last finish - due).
"""

from __future__ import annotations

import asyncio
import io
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from bench import seed
from bench.env import BenchEnv
from bench.report import Row
from shared.storage import LocalStorage, asset_key
from worker import media
from worker.staging import StagedAsset, Stager
from worker.variants import REDUCING_GAP, THUMB_SIDE, WEBP_METHOD, WEBP_QUALITY

SIDE = 1024
PARAMS = {"width": SIDE, "height": SIDE, "format": "png"}


def _png(seed_: int) -> bytes:
    """A 1024 x 1024 PNG with shapes on it (as local/sketch draws)."""
    rng = random.Random(seed_)
    image = Image.new("RGB", (SIDE, SIDE), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(SIDE), rng.randrange(SIDE)
        draw.ellipse((x0, y0, x0 + rng.randrange(1, SIDE), y0 + rng.randrange(1, SIDE)),
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bare_thumb(source: Path, out: Path) -> None:
    """Pillow alone: the same resize and encoding as the worker's thumb."""
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS,
                    reducing_gap=REDUCING_GAP)
    image.save(out, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)


async def _thumbnails(env: BenchEnv, n: int) -> list[Row]:
    settings = env.settings
    root = env.storage_dir / "media-thumbs"
    storage = LocalStorage(root)
    user, job = uuid.uuid4(), uuid.uuid4()
    images = [_png(i) for i in range(8)]
    staged = []
    for i in range(n):
        key = asset_key(user, job, i, "png")
        data = images[i % len(images)]
        storage.write_bytes(key, data)
        staged.append(StagedAsset(i, key, len(data), media.PNG, SIDE, SIDE, None))

    async with httpx.AsyncClient() as http:
        stager = Stager(settings, storage, http)
        try:
            await stager.add_variants(staged[0])  # start the pool outside the clock
            started = time.perf_counter()
            made = await asyncio.gather(*(stager.add_variants(a) for a in staged))
            genq_s = time.perf_counter() - started
        finally:
            stager.close()
    if sum(len(a.variants) for a in made) != n:
        raise RuntimeError("media: not every output got its thumbnail")

    bare_dir = root / "bare"
    bare_dir.mkdir(parents=True, exist_ok=True)
    sources = [storage.path(a.key) for a in staged]
    started = time.perf_counter()
    for i, source in enumerate(sources):
        _bare_thumb(source, bare_dir / f"{i}.webp")
    bare_s = time.perf_counter() - started

    threads = settings.media_threads
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: _bare_thumb(sources[i], bare_dir / f"t{i}.webp"), range(n)))
    bare_threads_s = time.perf_counter() - started
    notes = {"outputs": n, "genq_s": genq_s, "bare_s": bare_s, "bare_threads_s": bare_threads_s,
             "media_threads": threads}
    return [
        Row("media", "thumbnails/s, 1024x1024 PNG (genq variants vs Pillow bare loop)",
            n / genq_s, n / bare_s, "images/s", notes=notes),
        Row("media", f"thumbnails/s, genq vs Pillow bare loop in {threads} threads",
            n / genq_s, n / bare_threads_s, "images/s", notes=notes),
    ]


async def _pipeline(env: BenchEnv, n: int, *, variants: bool) -> tuple[float, float]:
    """(jobs/s, worker CPU seconds) for ``n`` 1024 x 1024 jobs through one genq worker."""
    pool, redis = env.db(), env.r()
    accounts = await seed.users(pool, 8, 10**9)
    ids = await seed.queued_jobs(pool, [u.id for u in accounts], n, PARAMS)
    name = "media-on" if variants else "media-off"
    queue = env.queue(name)
    worker = await env.genq_worker(queue, GENQ_VARIANTS_ENABLED=str(variants).lower())
    cpu0 = worker.cpu_s()
    due = await seed.enqueue_at(redis, queue, seed.generation_calls(ids), 1.0 + n * 0.002)
    done = await seed.wait_jobs(pool, ids, 60 + n * 1.0)
    cpu_s = worker.cpu_s() - cpu0
    env.stop(worker)
    if done["statuses"] != {"succeeded": n}:
        raise RuntimeError(f"media pipeline: not every job succeeded: {done['statuses']}")
    if variants:
        made = await pool.fetchval(
            "SELECT count(*) FROM asset_variants v JOIN workspace_assets a ON a.id = v.asset_id"
            " WHERE a.job_id = ANY($1::uuid[])", ids)
        if made != n:
            raise RuntimeError(f"media pipeline: {made} variants for {n} jobs")
    return n / (done["last_finished"] - due), cpu_s


async def run(env: BenchEnv, quick: bool) -> list[Row]:
    """Thumbnails against bare Pillow, then the pipeline with variants on and off."""
    rows = await _thumbnails(env, 40 if quick else 300)
    n = 30 if quick else 200
    off_rate, off_cpu = await _pipeline(env, n, variants=False)
    on_rate, on_cpu = await _pipeline(env, n, variants=True)
    rows.append(Row("media", "pipeline: 1024x1024 jobs/s, variants on vs off", on_rate,
                    off_rate, "jobs/s",
                    notes={"jobs": n, "worker_cpu_s_on": on_cpu, "worker_cpu_s_off": off_cpu}))
    rows.append(Row("media", "pipeline: worker CPU per 1024x1024 job, variants on vs off",
                    on_cpu / n * 1e3, off_cpu / n * 1e3, "ms", better="lower"))
    return rows
