"""How every provider calls its service: one HTTP call at a time, each retried on transient
failures (a connection error, a timeout, 408, 429, 5xx) with backoff and ``Retry-After``
through :func:`shared.retry.retry`, then given up as :class:`ProviderUnavailable`; any other
refusal is :class:`ProviderFailed` at once.

:func:`call_provider` is the loop for any client library (Replicate's raises its own errors);
:class:`ProviderHttp` is the loop over plain httpx for providers spoken to directly (fal,
OpenAI-compatible servers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from shared.pools import ShardedTransport
from shared.retry import parse_retry_after, retry
from shared.settings import Settings
from worker.providers.base import ProviderFailed, ProviderUnavailable

T = TypeVar("T")


async def call_provider(
    label: str,
    what: str,
    settings: Settings,
    op: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...],
    is_transient: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str],
    delay_s: Callable[[Exception], float | None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> T:
    """``await op()`` within ``provider_request_timeout_s``, tried up to
    ``provider_max_attempts`` times while it fails with a transient error.

    An error of ``errors`` that is not transient becomes :class:`ProviderFailed`
    (``provider_rejected``); a transient one still there after the last attempt becomes
    :class:`ProviderUnavailable`. Both keep the original error as ``__cause__``.

    With ``slots`` (see :func:`provider_slots`) each try first waits for one, outside its
    timeout.
    """
    s = settings

    async def once() -> T:
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the result and drops
        # a cancel that arrives as the call completes (a job canceled, a worker stopping).
        if slots is None:
            async with asyncio.timeout(s.provider_request_timeout_s):
                return await op()
        async with slots, asyncio.timeout(s.provider_request_timeout_s):
            return await op()

    try:
        return await retry(
            once, what=what, attempts=s.provider_max_attempts, retry_on=is_transient,
            base_s=s.provider_backoff_base_s, max_s=s.provider_backoff_max_s,
            delay_s=delay_s, event="provider_retry", provider=label,
        )
    except Exception as exc:
        if not isinstance(exc, (*errors, httpx.TransportError, TimeoutError)):
            raise
        if not is_transient(exc):
            raise ProviderFailed(f"{label} refused the request ({describe(exc)})",
                                 code="provider_rejected") from exc
        raise ProviderUnavailable(
            f"{label} was unavailable after {s.provider_max_attempts} attempts "
            f"({describe(exc)})"
        ) from exc


def provider_transport(settings: Settings, *, trust_env: bool) -> ShardedTransport:
    """The connections to one provider: ``provider_max_connections`` at once, all of them
    kept alive between calls (a worker polling thousands of predictions reuses them instead of
    opening new ones), in small pools that stay cheap to hand out (``shared/pools.py``)."""
    return ShardedTransport(settings.provider_max_connections, trust_env=trust_env)


def provider_slots(settings: Settings) -> asyncio.Semaphore:
    """Calls to one provider in flight at once, as many as its pool has connections. The rest
    wait here, in order, rather than in the HTTP pool: httpcore's pool scans every queued
    request against every connection each time one is handed out, so thousands of jobs
    queued there (10,000 creates at once) cost time quadratic in their number."""
    return asyncio.Semaphore(settings.provider_max_connections)


class HttpStatusError(Exception):
    """A provider answered with an error status."""

    def __init__(self, status: int, detail: str, retry_after_s: float | None,
                 body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.retry_after_s, self.body = (
            status, detail, retry_after_s, body)


def is_transient_http(exc: BaseException) -> bool:
    """Worth another try: no answer, or 408 / 429 / 5xx."""
    if isinstance(exc, HttpStatusError):
        return exc.status in (408, 429) or exc.status >= 500
    return isinstance(exc, httpx.TransportError | TimeoutError)


def describe_http(exc: BaseException) -> str:
    if isinstance(exc, HttpStatusError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _detail(body: Any, text: str) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, fal's
    ``{"detail": ...}``, or the start of the text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)[:300]
    return text[:300] or "no detail"


class ProviderHttp:
    """JSON over HTTP to one provider, every call through :func:`call_provider`."""

    def __init__(self, label: str, settings: Settings, headers: dict[str, str]) -> None:
        self.label = label
        self.settings = settings
        # Provider APIs are addressed directly: env proxies are not used.
        self.slots = provider_slots(settings)
        self.client = httpx.AsyncClient(
            headers=headers, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(settings.provider_request_timeout_s),
            transport=provider_transport(settings, trust_env=False),
        )

    async def _once(self, method: str, url: str, body: Any,
                    headers: dict[str, str] | None) -> Any:
        response = await self.client.request(method, url, json=body, headers=headers)
        try:
            data: Any = response.json() if response.content else None
        except ValueError:
            data = None
        if response.status_code >= 400:
            raise HttpStatusError(
                response.status_code, _detail(data, response.text),
                parse_retry_after(response.headers.get("retry-after")), data,
            )
        return data

    async def call(self, what: str, method: str, url: str, *, body: Any = None,
                   headers: dict[str, str] | None = None) -> Any:
        """The decoded JSON answer (None if empty); see :func:`call_provider` for errors."""
        return await call_provider(
            self.label, what, self.settings, lambda: self._once(method, url, body, headers),
            errors=(HttpStatusError,), is_transient=is_transient_http, describe=describe_http,
            delay_s=lambda exc: exc.retry_after_s if isinstance(exc, HttpStatusError) else None,
            slots=self.slots,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a :class:`ProviderFailed`, if it came from one."""
    cause = exc.__cause__
    return cause.status if isinstance(cause, HttpStatusError) else None
