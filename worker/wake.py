"""Workers woken by enqueues instead of waiting out their poll delay.

arq polls its queue every ``poll_delay`` (``GENQ_POLL_DELAY_S``) when idle, so a job submitted
to an idle worker waits half that delay on average before it starts. genq's enqueue
(:func:`shared.queue.enqueue_generations`) also publishes on the queue's wake channel
(:func:`shared.queue.wake_channel`), in the same round trip; every worker of the queue is
subscribed to it and polls at once when a wake comes. The polls on the delay go on as before,
so a lost wake (Redis unreachable, a message published while the subscription was down) only
costs that wait: no job depends on a wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.connections import ArqRedis, create_pool, log_redis_info
from arq.worker import Worker
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared.logging import get_logger
from shared.queue import wake_channel

log = get_logger(__name__)
arq_log = logging.getLogger("arq.worker")

# After the subscription failed, how long a worker polls on its delay alone before it tries to
# subscribe again.
RESUBSCRIBE_S = 5.0
# A subscription that heard nothing for this long sends a PING down its connection, so a
# connection that died without a word fails (and is made again) instead of waiting forever.
HEALTH_CHECK_S = 30.0


class Wake:
    """The subscription of one worker to its queue's wake channel."""

    def __init__(self, redis: ArqRedis, channel: str) -> None:
        self.redis, self.channel = redis, channel
        self.pubsub: PubSub | None = None
        self.retry_at = 0.0
        self.heard = 0.0  # when the subscription last heard from Redis (loop time)
        self.down = False

    async def wait(self, timeout_s: float) -> None:
        """Until a wake comes, then take every wake already sent (a burst of enqueues wakes one
        poll); or until ``timeout_s`` passed. Without a subscription, simply ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            pubsub = await self._subscribed(loop.time())
            if pubsub is not None:
                if loop.time() - self.heard > HEALTH_CHECK_S:
                    await pubsub.ping()
                    self.heard = loop.time()
                # A subscribe confirmation comes back as None, a PING's answer as a message of
                # its own, before the time is up: wait on.
                while (left := deadline - loop.time()) > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=left)
                    if message is not None:
                        self.heard = loop.time()
                    if message is not None and message["type"] == "message":
                        while await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0) is not None:
                            pass
                        break
                if self.down:
                    self.down = False
                    log.info("worker_wake_restored", channel=self.channel)
                return
        except (RedisError, OSError) as exc:
            await self._drop(exc, loop.time())
        await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def _subscribed(self, now: float) -> PubSub | None:
        if self.pubsub is None and now >= self.retry_at:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            self.pubsub = pubsub
            await pubsub.subscribe(self.channel)
            self.heard = now
        return self.pubsub

    async def _drop(self, exc: BaseException, now: float) -> None:
        """Forget a failed subscription; try again in :data:`RESUBSCRIBE_S`."""
        if not self.down:
            self.down = True
            log.warning("worker_wake_unavailable", channel=self.channel, error=repr(exc),
                        retry_s=RESUBSCRIBE_S)
        self.retry_at = now + RESUBSCRIBE_S
        await self.close()

    async def close(self) -> None:
        """Unsubscribe and give the connection back."""
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


class WakeableWorker(Worker):
    """arq's :class:`~arq.worker.Worker`, polling at once when its queue's wake channel says a
    job was enqueued, else every ``poll_delay`` as arq does."""

    async def main(self) -> None:
        """arq 0.28's ``Worker.main`` with the pause between polls cut short by a wake
        (tests/integration/test_arq_layout.py pins the source this follows), minus burst mode,
        which genq never runs (arq's own then)."""
        if self.burst:
            return await super().main()
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        arq_log.info("Starting worker for %d functions: %s", len(self.functions),
                     ", ".join(self.functions))
        await log_redis_info(self.pool, arq_log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        wake = Wake(self.pool, wake_channel(self.queue_name))
        loop = asyncio.get_running_loop()
        try:
            while True:
                before = loop.time()
                await self._poll_iteration()
                await wake.wait(max(0.0, self.poll_delay_s - (loop.time() - before)))
        finally:
            await wake.close()
