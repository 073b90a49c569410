"""The one small interface every provider implements, and what it returns."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import GenqError


@dataclass(frozen=True)
class GenerationRequest:
    """What a provider needs to make one job's outputs."""

    job_id: uuid.UUID
    model_key: str
    ref: str
    prompt: str
    num_outputs: int
    params: dict[str, Any]
    seed: int | None
    # An OpenAI-compatible model's server and the environment variable holding its key.
    base_url: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class UrlOutput:
    """An output the provider hosts; staging downloads it."""

    url: str


@dataclass(frozen=True)
class BytesOutput:
    """An output made in-process (the local provider)."""

    data: bytes


Output = UrlOutput | BytesOutput


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: its outputs, in order."""

    outputs: list[Output] = field(default_factory=list)


# Called with the provider's id as soon as it exists, before any waiting. The worker stores it
# on the job row; raising stops the provider from going on.
OnCreated = Callable[[str], Awaitable[None]]
# Called with the job's place in the provider's own queue while it waits there, and with None
# once it runs. The worker shows it on the job.
OnQueuePosition = Callable[[int | None], Awaitable[None]]


async def no_queue(_position: int | None) -> None:
    return None


class ProviderError(GenqError):
    """The provider could not make the outputs."""

    code = "provider_error"


class ProviderFailed(ProviderError):
    """The generation failed for good (the model failed, or the request was refused)."""

    code = "generation_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ProviderUnavailable(ProviderFailed):
    """The provider kept answering with transient errors until the attempts ran out."""

    code = "provider_unavailable"


class ProviderCanceled(ProviderError):
    """The prediction was canceled at the provider."""

    code = "canceled"


class Provider(abc.ABC):
    """A generation backend. One instance serves every job of a worker process."""

    name: str

    @abc.abstractmethod
    async def generate(
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated,
        on_queue_position: OnQueuePosition = no_queue,
    ) -> GenerationResult:
        """Make the outputs, resuming ``prediction_id`` if one was already created; report the
        place in the provider's queue through ``on_queue_position`` if it has one.

        Raises :class:`ProviderFailed` (permanent), :class:`ProviderCanceled`.
        """

    async def cancel(self, prediction_id: str, *, ref: str | None = None  # noqa: B027
                     ) -> None:
        """Cancel a prediction of the model ``ref`` at the provider (best effort). Default:
        nothing to cancel."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
