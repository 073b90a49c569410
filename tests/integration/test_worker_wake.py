"""An idle worker is woken by the enqueue (worker/wake.py) instead of waiting out its poll
delay; without Redis it waits its delay, as arq alone would."""

from __future__ import annotations

import asyncio
import time
import uuid

from arq.connections import ArqRedis
from structlog.testing import capture_logs

from shared.embedded import free_port
from shared.queue import enqueue_generations, wake_channel
from worker.wake import RESUBSCRIBE_S, Wake


async def _subscribed(redis: ArqRedis, channel: str) -> int:
    counts = await redis.pubsub_numsub(channel)
    return int(counts[0][1])


async def test_an_enqueue_wakes_a_waiting_worker(arq_redis: ArqRedis, queue_name: str) -> None:
    channel = wake_channel(queue_name)
    wake = Wake(arq_redis, channel)
    try:
        await wake.wait(0.05)  # subscribes
        assert await _subscribed(arq_redis, channel) == 1
        waiting = asyncio.create_task(wake.wait(60))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await enqueue_generations(arq_redis, queue_name, [uuid.uuid4(), uuid.uuid4()])
        # Woken by the enqueue, not by the end of its 60 s.
        await asyncio.wait_for(waiting, 10)
    finally:
        await wake.close()
    assert await _subscribed(arq_redis, channel) == 0


async def test_a_burst_of_enqueues_wakes_one_poll(arq_redis: ArqRedis, queue_name: str) -> None:
    wake = Wake(arq_redis, wake_channel(queue_name))
    try:
        await wake.wait(0.05)
        for _ in range(20):
            await enqueue_generations(arq_redis, queue_name, [uuid.uuid4()])
        await asyncio.wait_for(wake.wait(60), 10)
        # Every wake already sent was taken with the first: the next wait lasts its time.
        started = time.monotonic()
        await wake.wait(0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        await wake.close()


async def test_without_redis_the_wait_is_the_poll_delay(queue_name: str) -> None:
    # Nothing listens there (arq's create_pool would not even return).
    unreachable = ArqRedis(host="127.0.0.1", port=free_port())
    wake = Wake(unreachable, wake_channel(queue_name))
    try:
        with capture_logs() as logs:
            for _ in range(3):
                started = time.monotonic()
                await wake.wait(0.2)
                assert 0.15 <= time.monotonic() - started < RESUBSCRIBE_S
        # Said once, and no subscription is kept.
        assert [e["event"] for e in logs] == ["worker_wake_unavailable"]
        assert wake.pubsub is None and wake.down
    finally:
        await wake.close()
        await unreachable.aclose()
