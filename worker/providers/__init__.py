"""Generation providers, one file each, behind :class:`worker.providers.base.Provider`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from shared.settings import Settings
from worker.providers.base import Provider


def _local(settings: Settings) -> Provider:
    from worker.providers.local import LocalProvider

    return LocalProvider(latency_s=settings.local_latency_s,
                         failure_rate=settings.local_failure_rate)


def _replicate(settings: Settings) -> Provider:
    from worker.providers.replicate import ReplicateProvider

    return ReplicateProvider(settings)


def _fal(settings: Settings) -> Provider:
    from worker.providers.fal import FalProvider

    return FalProvider(settings)


def _openai(settings: Settings) -> Provider:
    from worker.providers.openai_images import OpenAIImagesProvider

    return OpenAIImagesProvider(settings)


# The catalog's ``provider`` names and how to build each.
PROVIDERS: dict[str, Callable[[Settings], Provider]] = {
    "local": _local, "replicate": _replicate, "fal": _fal, "openai": _openai,
}


def build_providers(settings: Settings, names: Iterable[str]) -> dict[str, Provider]:
    """The providers the catalog names (``names``: its models' ``provider`` values), keyed by
    name; a name genq has no provider for is left out (its jobs fail as
    ``unknown_provider``).

    Call inside the running event loop: HTTP clients bind to the loop that first uses them.
    """
    return {name: PROVIDERS[name](settings) for name in sorted(set(names)) if name in PROVIDERS}
