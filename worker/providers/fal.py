"""fal through its queue API, spoken directly over httpx (every call through the retry loop all
providers share, :class:`worker.providers.calls.ProviderHttp`).

- submit: ``POST {queue}/{model_id}`` with ``Authorization: Key <GENQ_FAL_KEY>`` and the input
  -> ``{request_id, status_url, response_url, cancel_url, queue_position?}``;
- status: ``GET {queue}/{app}/requests/{id}/status`` -> ``IN_QUEUE`` (with ``queue_position``),
  ``IN_PROGRESS`` or ``COMPLETED`` (with ``error`` when the model failed);
- result: ``GET {queue}/{app}/requests/{id}``;
- cancel: ``PUT {queue}/{app}/requests/{id}/cancel``.

``{app}`` is the first two segments of the model id (``fal-ai/flux/dev`` -> ``fal-ai/flux``);
the URLs returned at submit are used when present. The request id is stored on the job before
waiting, so a later attempt resumes the same request instead of paying for a second one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from shared.logging import get_logger
from shared.settings import Settings
from worker.providers.base import (
    BytesOutput,
    GenerationRequest,
    GenerationResult,
    OnCreated,
    OnQueuePosition,
    Output,
    Provider,
    ProviderFailed,
    UrlOutput,
    no_queue,
)
from worker.providers.calls import ProviderHttp, http_status

log = get_logger(__name__)


def app_path(model_id: str) -> str:
    """The part of a model id fal's request URLs use: its first two segments."""
    return "/".join(model_id.strip("/").split("/")[:2])


def _url_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


def _position(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _output(item: Any) -> Output | None:
    """One file of a result: ``{"url": ...}`` (a data URI is decoded here)."""
    url = item.get("url") if isinstance(item, dict) else item
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            return None
        try:
            return BytesOutput(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            return None
    return UrlOutput(url)


def outputs_of(result: Any) -> list[Output]:
    """The files of a fal result: ``images`` / ``videos`` lists, or one ``image`` / ``video``."""
    if not isinstance(result, dict):
        return []
    items: list[Any] = []
    for many in ("images", "videos"):
        if isinstance(result.get(many), list):
            items.extend(result[many])
    for one in ("image", "video"):
        if result.get(one) is not None:
            items.append(result[one])
    return [out for out in map(_output, items) if out is not None]


class FalProvider(Provider):
    """Submits (or resumes) one queue request per job and polls it to the end."""

    name = "fal"

    def __init__(self, settings: Settings) -> None:
        key = settings.fal_key
        headers = {"Authorization": f"Key {key.get_secret_value()}"} if key is not None else {}
        self.settings = settings
        self.queue = settings.fal_queue_url.rstrip("/")
        self.http = ProviderHttp("fal", settings, headers)

    def _request_url(self, ref: str, request_id: str) -> str:
        return f"{self.queue}/{app_path(ref)}/requests/{request_id}"

    async def _submit(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            **request.params, "prompt": request.prompt, "num_images": request.num_outputs,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        answer = await self.http.call("submit", "POST", f"{self.queue}/{request.ref.strip('/')}",
                                      body=payload)
        if not isinstance(answer, dict) or not isinstance(answer.get("request_id"), str):
            raise ProviderFailed("fal answered the submission without a request_id",
                                 code="provider_rejected")
        return answer

    async def generate(
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated,
        on_queue_position: OnQueuePosition = no_queue,
    ) -> GenerationResult:
        """Submit (or resume ``prediction_id``), record the request id, poll, fetch the result."""
        base = None if prediction_id is None else self._request_url(request.ref, prediction_id)
        status_url = f"{base}/status" if base else None
        response_url = base
        if prediction_id is None:
            answer = await self._submit(request)
            prediction_id = str(answer["request_id"])
            await on_created(prediction_id)
            log.info("prediction_created", prediction_id=prediction_id, provider=self.name)
            base = self._request_url(request.ref, prediction_id)
            status_url = _url_or_none(answer.get("status_url")) or f"{base}/status"
            response_url = _url_or_none(answer.get("response_url")) or base
            await on_queue_position(_position(answer.get("queue_position")))
        else:
            log.info("prediction_resumed", prediction_id=prediction_id, provider=self.name)
        assert status_url is not None and response_url is not None
        rid = prediction_id
        interval = self.settings.provider_poll_interval_s
        while True:
            try:
                status = await self.http.call("status", "GET", status_url)
            except ProviderFailed as exc:
                if http_status(exc) == 404:
                    raise ProviderFailed(f"fal has no request {rid}",
                                         code="prediction_lost") from exc
                raise
            state = status.get("status") if isinstance(status, dict) else None
            if state == "COMPLETED":
                break
            if state == "IN_QUEUE":
                await on_queue_position(_position(status.get("queue_position")))
            elif state == "IN_PROGRESS":
                await on_queue_position(None)
            else:
                raise ProviderFailed(f"fal answered an unknown status {str(state)[:50]!r}",
                                     code="provider_rejected")
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.settings.provider_poll_max_interval_s)
        await on_queue_position(None)
        error = status.get("error")
        if error:
            raise ProviderFailed(f"the model failed: {str(error)[:500]}", code="model_failed")
        try:
            result = await self.http.call("result", "GET", response_url)
        except ProviderFailed as exc:
            if exc.code == "provider_rejected":
                # A finished request whose result is refused: the model's own error (422 etc.).
                raise ProviderFailed(f"the model failed: {exc.message}",
                                     code="model_failed") from exc
            raise
        return GenerationResult(outputs_of(result))

    async def cancel(self, prediction_id: str, *, ref: str | None = None) -> None:
        """Ask fal to cancel (a finished request answers 400: nothing to do); failures are
        logged, not raised (the job ends anyway)."""
        if ref is None:
            return
        try:
            await self.http.call("cancel", "PUT", f"{self._request_url(ref, prediction_id)}/cancel")
        except ProviderFailed as exc:
            if http_status(exc) != 400:
                log.warning("provider_cancel_failed", prediction_id=prediction_id,
                            error=str(exc))

    async def aclose(self) -> None:
        await self.http.aclose()
