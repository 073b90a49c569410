"""Replicate through the ``replicate`` package's async API.

The client retries GETs on 429/503/504 by itself but never a POST, and never a 500 or a
connection error; every call here goes through :meth:`ReplicateProvider._call`, which retries
those transient failures with the retry loop every provider shares
(:func:`worker.providers.calls.call_provider`: backoff, ``Retry-After``, up to
``provider_max_attempts``, then :class:`ProviderUnavailable`).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError
from structlog.contextvars import bound_contextvars

from shared.logging import get_logger
from shared.retry import parse_retry_after
from shared.settings import Settings
from worker.providers.base import (
    GenerationRequest,
    GenerationResult,
    OnCreated,
    OnQueuePosition,
    Output,
    Provider,
    ProviderCanceled,
    ProviderFailed,
    UrlOutput,
    no_queue,
)
from worker.providers.calls import call_provider, provider_slots, provider_transport
from worker.providers.poller import Poller

log = get_logger(__name__)

T = TypeVar("T")

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
_VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
# Where the transport puts the Retry-After of the last response of the current call. A mutable
# box: the call runs in a child task (wait_for), which sees a COPY of the context.
_retry_after: contextvars.ContextVar[list[float | None] | None] = contextvars.ContextVar(
    "genq_replicate_retry_after", default=None
)


class _RetryAfterTransport(httpx.AsyncBaseTransport):
    """Remembers ``Retry-After``: ReplicateError keeps the status but drops the headers."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        box = _retry_after.get()
        if box is not None:
            box[0] = parse_retry_after(response.headers.get("retry-after"))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def api_base_url(configured: str) -> str:
    """The client adds ``/v1`` to every path, so drop it from the configured URL."""
    url = configured.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ReplicateError):
        return exc.status is not None and (exc.status in (408, 429) or exc.status >= 500)
    return isinstance(exc, httpx.TransportError | TimeoutError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ReplicateError):
        return f"HTTP {exc.status}: {exc.detail or exc.title or 'no detail'}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _outputs(raw: Any) -> list[Output]:
    """URLs from a prediction's output: one string, or a list of them."""
    items = raw if isinstance(raw, list) else [raw]
    return [UrlOutput(item) for item in items if isinstance(item, str) and item]


class ReplicateProvider(Provider):
    """Creates (or resumes) one prediction per job; one poller per worker polls them all."""

    name = "replicate"

    def __init__(self, settings: Settings) -> None:
        token = settings.replicate_api_token
        self.settings = settings
        self.client = ReplicateClient(
            api_token=token.get_secret_value() if token is not None else None,
            base_url=api_base_url(settings.replicate_base_url),
            transport=_RetryAfterTransport(provider_transport(settings, trust_env=True)),
        )
        self.slots = provider_slots(settings)
        self.poller: Poller[Any] = Poller(
            self._get, lambda p: p.status in TERMINAL,
            interval_s=settings.provider_poll_interval_s,
            max_interval_s=settings.provider_poll_max_interval_s,
            concurrency=settings.provider_poll_concurrency,
        )

    async def _get(self, pid: str) -> Any:
        """One poll of a prediction (retried on transient errors); a 404 means it is lost."""
        try:
            with bound_contextvars(prediction_id=pid):
                return await self._call("get", lambda: self.client.predictions.async_get(pid))
        except ProviderFailed as exc:
            if isinstance(exc.__cause__, ReplicateError) and exc.__cause__.status == 404:
                raise ProviderFailed(
                    f"Replicate has no prediction {pid}", code="prediction_lost"
                ) from exc
            raise

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        box: list[float | None] = [None]

        async def once() -> T:
            # The transport puts this attempt's Retry-After here, if the answer had one.
            box[0] = None
            _retry_after.set(box)
            return await fn()

        return await call_provider(
            "Replicate", what, self.settings, once, errors=(ReplicateError,),
            is_transient=_is_transient, describe=_describe, delay_s=lambda _exc: box[0],
            slots=self.slots,
        )

    async def _create(self, request: GenerationRequest) -> Any:
        payload: dict[str, Any] = {
            **request.params, "prompt": request.prompt, "num_outputs": request.num_outputs,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        ref = request.ref
        if _VERSION_ID.match(ref):
            return await self.client.predictions.async_create(version=ref, input=payload)
        if ":" in ref:
            return await self.client.predictions.async_create(
                version=ref.split(":", 1)[1], input=payload
            )
        return await self.client.models.predictions.async_create(model=ref, input=payload)

    async def generate(
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated,
        on_queue_position: OnQueuePosition = no_queue,
    ) -> GenerationResult:
        """Create the prediction (or resume ``prediction_id``), record its id, and wait for
        the worker's poller to see it end."""
        first_poll_s: float | None = None
        if prediction_id is None:
            prediction = await self._call("create", lambda: self._create(request))
            prediction_id = str(prediction.id)
            await on_created(prediction_id)
            log.info("prediction_created", prediction_id=prediction_id)
        else:
            log.info("prediction_resumed", prediction_id=prediction_id)
            # A job handed back resumes here: its prediction may have ended meanwhile.
            first_poll_s = 0.0
        prediction = await self.poller.wait(prediction_id, group=request.ref,
                                            first_poll_s=first_poll_s)
        if prediction.status == "failed":
            raise ProviderFailed(
                f"the model failed: {prediction.error or 'no reason given'}", code="model_failed"
            )
        if prediction.status == "canceled":
            raise ProviderCanceled("the prediction was canceled at Replicate")
        return GenerationResult(_outputs(prediction.output))

    async def cancel(self, prediction_id: str, *, ref: str | None = None) -> None:
        """Ask Replicate to cancel; failures are logged, not raised (the job ends anyway)."""
        try:
            await self._call("cancel", lambda: self.client.predictions.async_cancel(prediction_id))
        except ProviderFailed as exc:
            log.warning("provider_cancel_failed", prediction_id=prediction_id, error=str(exc))

    async def aclose(self) -> None:
        """Stop the poller and close the client's connection pool (the package has no
        public close)."""
        await self.poller.aclose()
        await self.client._async_client.aclose()
