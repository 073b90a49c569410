"""OpenAI-style image generation: ``POST {base_url}/images/generations`` with
``Authorization: Bearer <key>`` and ``{model, prompt, n, ...params}`` -> ``{"created", "data":
[{"url"} | {"b64_json"}, ...]}``. OpenAI itself, Together and many self-hosted servers speak it.

Each model names its server (``base_url``) and the environment variable holding its key
(``api_key_env``) in the catalog, so several servers can be used at once. The call is
synchronous: there is no request id to resume, so an attempt that dies while waiting is asked
again by the next one. Every call goes through the retry loop all providers share
(:class:`worker.providers.calls.ProviderHttp`).
"""

from __future__ import annotations

import base64
import binascii
import os
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
from worker.providers.calls import ProviderHttp

log = get_logger(__name__)


def outputs_of(answer: Any) -> list[Output]:
    """The images of an answer, in order: each ``url`` or decoded ``b64_json``."""
    data = answer.get("data") if isinstance(answer, dict) else None
    outputs: list[Output] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("b64_json"), str):
            try:
                outputs.append(BytesOutput(base64.b64decode(item["b64_json"], validate=True)))
            except (binascii.Error, ValueError):
                log.warning("provider_output_undecodable", provider="openai")
        elif isinstance(item.get("url"), str) and item["url"]:
            outputs.append(UrlOutput(item["url"]))
    return outputs


class OpenAIImagesProvider(Provider):
    """One ``images/generations`` call per job."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.http = ProviderHttp("the OpenAI-compatible server", settings, {})

    async def generate(
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated,
        on_queue_position: OnQueuePosition = no_queue,
    ) -> GenerationResult:
        """Ask the model's server for ``num_outputs`` images (nothing to resume)."""
        if request.base_url is None or request.api_key_env is None:
            raise ProviderFailed(f"the model {request.model_key} names no base_url and "
                                 "api_key_env", code="provider_not_configured")
        key = os.environ.get(request.api_key_env)
        if not key:
            raise ProviderFailed(f"the environment variable {request.api_key_env} holding the "
                                 f"key of {request.model_key} is not set",
                                 code="provider_not_configured")
        body: dict[str, Any] = {
            **request.params, "model": request.ref, "prompt": request.prompt,
            "n": request.num_outputs,
        }
        answer = await self.http.call(
            "generate", "POST", f"{request.base_url.rstrip('/')}/images/generations",
            body=body, headers={"Authorization": f"Bearer {key}"},
        )
        return GenerationResult(outputs_of(answer))

    async def aclose(self) -> None:
        await self.http.aclose()
