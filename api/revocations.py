"""Revoked keys and disabled users leave every API process's key cache at once.

The process that revokes a key (or disables a user) publishes it on a Redis channel after its
transaction commits; every API process listens on that channel and drops the entry. A process
uses its cache only while it is subscribed (:attr:`api.auth.ApiKeyCache.live`): when the
subscription breaks it clears the cache and authenticates every request from PostgreSQL until
it is subscribed again, so a message it missed meanwhile cannot leave a revoked key cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import redis.exceptions

from api.auth import ApiKeyCache
from shared.logging import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = get_logger(__name__)

#: How long to wait before subscribing again after the subscription broke.
RESUBSCRIBE_DELAY_S = 0.5
#: How often a quiet subscription is checked (a PING), so a dead connection is noticed.
HEALTH_CHECK_S = 1.0
_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def channel(queue_name: str) -> str:
    """The channel of one installation (its queue name, so installations sharing a Redis do
    not hear each other)."""
    return f"{queue_name}:auth-invalidate"


def key_message(digest: bytes) -> str:
    """The message that drops one key (by the hash caches hold)."""
    return f"key:{digest.hex()}"


def user_message(user_id: uuid.UUID) -> str:
    """The message that drops every entry of one user."""
    return f"user:{user_id}"


def apply(cache: ApiKeyCache, message: str) -> None:
    """Drop what ``message`` names from ``cache`` (an unknown message clears it all)."""
    kind, _, value = message.partition(":")
    try:
        if kind == "key":
            cache.invalidate(bytes.fromhex(value))
            return
        if kind == "user":
            cache.drop_user(uuid.UUID(value))
            return
    except ValueError:
        pass
    cache.clear()


async def publish(redis: Redis, queue_name: str, cache: ApiKeyCache, message: str) -> None:
    """Apply ``message`` here and tell every other API process. If Redis cannot be reached the
    others are not subscribed either, so their caches are off already."""
    apply(cache, message)
    try:
        await redis.publish(channel(queue_name), message)
    except _ERRORS as exc:
        log.warning("auth_invalidation_not_published", error=repr(exc))


async def listen(redis: Redis, queue_name: str, cache: ApiKeyCache) -> None:
    """Keep ``cache`` subscribed to invalidations until cancelled; live only while
    subscribed."""
    name = channel(queue_name)
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(name)
            while True:
                message = await pubsub.get_message(timeout=HEALTH_CHECK_S)
                if message is None:
                    await pubsub.ping()
                    continue
                if message["type"] == "subscribe":
                    cache.clear(live=True)
                    log.info("auth_invalidations_subscribed")
                elif message["type"] == "message":
                    data = message["data"]
                    apply(cache, data.decode() if isinstance(data, bytes) else str(data))
        except _ERRORS as exc:
            if cache.live:
                log.warning("auth_invalidations_lost", error=repr(exc))
            cache.clear(live=False)
        finally:
            with contextlib.suppress(*_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        await asyncio.sleep(RESUBSCRIBE_DELAY_S)
