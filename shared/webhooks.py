"""Webhooks, the parts the intake and the delivery loop share: which URLs a job may name, the
users' ``whsec_`` secrets, the Standard Webhooks signature, and when a failed delivery is tried
again."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
from datetime import datetime

import httpx
from standardwebhooks import Webhook

from shared.errors import AddressBlocked
from shared.netguard import default_port, resolve_checked

#: What a job may subscribe to; ``completed`` is any end (succeeded, failed, canceled).
EVENTS = ("started", "output", "completed")
DEFAULT_EVENTS = ("completed",)
MAX_URL_CHARS = 2048
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32
# How long the intake waits for a webhook host's DNS answer.
RESOLVE_TIMEOUT_S = 3.0

# Seconds before each retry (the first attempt is at once), then stop: 18 attempts over about
# 28 hours. The first retries come within seconds, so a receiver that was down for a few
# seconds has its events within about a minute of coming back.
RETRY_DELAYS_S = (1, 2, 4, 8, 16, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
                  43200)
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
# Each delay is moved by up to this fraction either way, so receivers that failed together
# are not retried together.
JITTER = 0.2


def url_problem(raw: str) -> str | None:
    """What is wrong with ``raw`` as a webhook URL, before any DNS: scheme, length, host,
    credentials; None if nothing."""
    if len(raw) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters"
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError):
        return "must be an absolute http:// or https:// URL"
    if url.scheme not in ("http", "https") or not url.host:
        return "must be an absolute http:// or https:// URL"
    if url.userinfo:
        return "must not contain a user name or password"
    if url.fragment:
        return "must not contain a fragment"
    return None


async def address_problem(raw: str, allowed_hosts: list[str]) -> str | None:
    """Why the URL's host may not be called (a private, loopback, link-local, multicast or
    reserved address, or a name resolving to one, unless the host is allowed), or None."""
    url = httpx.URL(raw)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await resolve_checked(ascii_host(url), default_port(url), allowed_hosts,
                                  what="webhook")
    except AddressBlocked as exc:
        return exc.message
    except TimeoutError:
        return f"webhook host {url.host!r} did not resolve in time"
    return None


def ascii_host(url: httpx.URL) -> str:
    """The URL's host as it is resolved (an international name in its ``xn--`` form)."""
    return url.raw_host.decode("ascii")


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signature(secrets_: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64 HMAC-SHA256>`` per secret, space
    separated (during a rotation's overlap a receiver holding either secret verifies it)."""
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets_)


def retry_delay(attempts: int) -> float | None:
    """Seconds until the next try after ``attempts`` failed ones, with jitter; None: give up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS_S[max(attempts, 1) - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)
