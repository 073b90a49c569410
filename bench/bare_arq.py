"""The worker baselines: a bare arq ``Worker`` on the same Redis and with the same concurrency
and poll delay genq's worker uses, with

- ``noop``: nothing, what arq itself costs per job; ``sleep``: a slow provider;
- ``floor`` (with ``--database-url`` and ``--storage-dir``): the worker floor (see
  ``bench/floor.py``), one small file written and fsynced and one UPDATE per job;
- ``rows_floor`` (the same options): the floor of a worker that writes genq's rows and files
  with no genq code: a queued genq job claimed (``PLAIN_CLAIM``, group-committed with the other
  running jobs' claims), its output and a thumbnail written as fixed bytes (no image rendered)
  into a folder of its own, both fsynced and then the folder, its output counted
  (``count_output_staged``), and its final write (``PLAIN_FINALIZE``, group-committed);
- ``replicate_floor`` (with ``--replicate-url``): the provider floor, what a job on Replicate
  must do with no genq code: the ``replicate`` client's create, its GETs until the prediction
  ends, and the output's download, each through a pool of ``--connections`` kept-alive
  connections that at most that many calls enter at once.

``python -m bench.bare_arq --redis-url URL --queue Q [--max-jobs N] [--poll-delay S]
[--database-url URL --storage-dir DIR --pool-size N] [--replicate-url URL --connections N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvloop
from arq.connections import RedisSettings
from arq.worker import Worker

from bench import floor as floor_db
from sql import queries


async def noop(ctx: dict[str, Any]) -> None:
    """Nothing: what arq itself costs per job."""


async def sleep(ctx: dict[str, Any], seconds: float) -> None:
    """Wait like a slow provider would."""
    await asyncio.sleep(seconds)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


async def floor(ctx: dict[str, Any], row_id: str) -> None:
    """One durable file (written off the event loop, as genq does) and one UPDATE."""
    await asyncio.to_thread(_write_synced, ctx["storage_dir"] / f"{row_id}.bin", b"floor")
    await ctx["pool"].execute(floor_db.MARK_DONE, uuid.UUID(row_id))


async def floor_file(ctx: dict[str, Any], row_id: str) -> None:
    """One durable file only."""
    await asyncio.to_thread(_write_synced, ctx["storage_dir"] / f"{row_id}.bin", b"floor")


async def floor_update(ctx: dict[str, Any], row_id: str) -> None:
    """One UPDATE only."""
    await ctx["pool"].execute(floor_db.MARK_DONE, uuid.UUID(row_id))


async def floor_grouped(ctx: dict[str, Any], row_id: str) -> None:
    """One durable file and one UPDATE, group-committed with the other running jobs'."""
    await asyncio.to_thread(_write_synced, ctx["storage_dir"] / f"{row_id}.bin", b"floor")
    await ctx["mark_done"]((uuid.UUID(row_id),))


def _write_job_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_synced(folder / "0.png", b"rows floor output")
    _write_synced(folder / "0.thumb.webp", b"rows floor thumb")
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def rows_floor(ctx: dict[str, Any], job_id: str) -> None:
    """A genq job's rows and files with no genq code: claim, two durable files and their
    folder, the output counted, the final write."""
    job = uuid.UUID(job_id)
    await ctx["claim"]((job,))
    folder = ctx["storage_dir"] / job_id
    await asyncio.to_thread(_write_job_files, folder)
    if await ctx["pool"].fetchval(queries["count_output_staged"], job, 1) != 1:
        raise RuntimeError(f"job {job_id} was not claimed")
    await ctx["finalize"]((job, f"{job_id}/0.png", f"{job_id}/0.thumb.webp"))


async def replicate_floor(ctx: dict[str, Any], model: str, first_poll_s: float) -> None:
    """Create a prediction, GET it first after ``first_poll_s`` and then every
    ``poll_interval`` (the client's own, as its ``wait`` does) until it ends, and download its
    output into memory."""
    client, slots, http = ctx["replicate"], ctx["slots"], ctx["http"]
    async with slots:
        prediction = await client.models.predictions.async_create(
            model=model, input={"prompt": "floor", "num_outputs": 1})
    await asyncio.sleep(first_poll_s)
    while True:
        async with slots:
            prediction = await client.predictions.async_get(prediction.id)
        if prediction.status in ("succeeded", "failed", "canceled"):
            break
        await asyncio.sleep(client.poll_interval)
    if prediction.status != "succeeded":
        raise RuntimeError(f"prediction {prediction.id} {prediction.status}")
    output = prediction.output
    async with slots:
        response = await http.get(output[0] if isinstance(output, list) else output)
    response.raise_for_status()


def main() -> None:
    """Run the worker until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--max-jobs", type=int, default=100)
    parser.add_argument("--poll-delay", type=float, default=0.05)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--storage-dir", type=Path, default=None)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--replicate-url", default=None)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    async def startup(ctx: dict[str, Any]) -> None:
        if args.database_url is not None:
            ctx["pool"] = await floor_db.create_pool(args.database_url, args.pool_size)
            ctx["storage_dir"] = args.storage_dir
            ctx["mark_done"] = floor_db.group_commit(ctx["pool"], floor_db.MARK_DONE_MANY)
            ctx["claim"] = floor_db.group_commit(ctx["pool"], floor_db.PLAIN_CLAIM,
                                                 "rows-floor", 60.0)
            ctx["finalize"] = floor_db.group_commit(ctx["pool"], floor_db.PLAIN_FINALIZE,
                                                    float(7 * 86400))
            args.storage_dir.mkdir(parents=True, exist_ok=True)
        if args.replicate_url is not None:
            from replicate.client import Client

            n = args.connections
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            ctx["replicate"] = Client(api_token="floor", base_url=args.replicate_url,
                                      transport=httpx.AsyncHTTPTransport(limits=limits))
            ctx["http"] = httpx.AsyncClient(limits=limits, trust_env=False)
            ctx["slots"] = asyncio.Semaphore(n)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "pool" in ctx:
            await ctx["pool"].close()
        if "http" in ctx:
            await ctx["http"].aclose()

    async def serve() -> None:
        # Built and run on the running loop, and on uvloop, as ``genq worker`` is.
        worker = Worker(
            functions=[noop, sleep, floor, floor_grouped, floor_file, floor_update,
                       rows_floor, replicate_floor],
            redis_settings=RedisSettings.from_dsn(args.redis_url),
            queue_name=args.queue,
            max_jobs=args.max_jobs,
            poll_delay=args.poll_delay,
            handle_signals=True,
            on_startup=startup,
            on_shutdown=shutdown,
        )
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            pass  # the signal handler cancels the main task: a normal stop
        finally:
            await worker.close()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
