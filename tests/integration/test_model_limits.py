"""A model's ``max_concurrency`` in Redis (shared/limits.py): a place is taken by one caller at a
time beyond the limit, comes back when released, and comes back by itself when its holder dies
without releasing it (its lease expires)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared.limits import ModelLimit, ModelLimits, ModelSlot

LIMIT = ModelLimit("acme/model", max_concurrency=2, max_per_minute=None)


async def test_max_concurrency_admits_two_then_the_third_on_release(
    redis_client: aioredis.Redis, queue_name: str
) -> None:
    limits = ModelLimits(redis_client, queue_name, lease_s=60)
    first = await limits.acquire(LIMIT, new_call=True)
    second = await limits.acquire(LIMIT, new_call=True)
    third = asyncio.create_task(limits.acquire(LIMIT, new_call=True))
    await asyncio.sleep(0.3)
    assert not third.done()
    assert await redis_client.zcard(limits.concurrency_key(LIMIT.key)) == 2
    await first.release()
    slot = await asyncio.wait_for(third, 10)
    assert isinstance(slot, ModelSlot)
    assert await redis_client.zcard(limits.concurrency_key(LIMIT.key)) == 2
    await second.release()
    await slot.release()
    assert await redis_client.zcard(limits.concurrency_key(LIMIT.key)) == 0


async def test_a_dead_holders_place_comes_back_when_its_lease_expires(
    redis_client: aioredis.Redis, queue_name: str
) -> None:
    # Leases of one second, never renewed nor released: as a worker killed with SIGKILL.
    dead = ModelLimits(redis_client, queue_name, lease_s=1)
    await dead.acquire(LIMIT, new_call=True)
    await dead.acquire(LIMIT, new_call=True)
    alive = ModelLimits(redis_client, queue_name, lease_s=60)
    slot = await asyncio.wait_for(alive.acquire(LIMIT, new_call=True), 10)
    assert await redis_client.zcard(alive.concurrency_key(LIMIT.key)) == 1
    await slot.release()


async def test_a_renewed_lease_is_kept(redis_client: aioredis.Redis, queue_name: str) -> None:
    limits = ModelLimits(redis_client, queue_name, lease_s=2)
    one = ModelLimit("acme/one", max_concurrency=1, max_per_minute=None)
    held = await limits.acquire(one, new_call=True)
    waiting = asyncio.create_task(limits.acquire(one, new_call=True))
    for _ in range(8):  # longer than the lease
        await asyncio.sleep(0.4)
        await held.renew()
        assert not waiting.done()
    await held.release()
    await (await asyncio.wait_for(waiting, 10)).release()
