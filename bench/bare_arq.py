"""The worker baseline: a bare arq ``Worker`` with one function that does nothing (or sleeps),
on the same Redis and with the same concurrency and poll delay genq's worker uses.

``python -m bench.bare_arq --redis-url URL --queue Q [--max-jobs N] [--poll-delay S]``
Enqueue ``noop`` (or ``sleep`` with seconds) on queue Q.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker


async def noop(ctx: dict[str, Any]) -> None:
    """Nothing: what arq itself costs per job."""


async def sleep(ctx: dict[str, Any], seconds: float) -> None:
    """Wait like a slow provider would."""
    await asyncio.sleep(seconds)


def main() -> None:
    """Run the worker until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--max-jobs", type=int, default=100)
    parser.add_argument("--poll-delay", type=float, default=0.05)
    args = parser.parse_args()
    worker = Worker(
        functions=[noop, sleep],
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        queue_name=args.queue,
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        handle_signals=True,
    )
    worker.run()


if __name__ == "__main__":
    main()
