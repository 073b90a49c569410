"""Generation providers, one file each, behind :class:`worker.providers.base.Provider`."""

from __future__ import annotations

from shared.settings import Settings
from worker.providers.base import Provider


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Every provider a worker can use, keyed by the catalog's ``provider`` name.

    Call inside the running event loop: HTTP clients bind to the loop that first uses them.
    """
    from worker.providers.fal import FalProvider
    from worker.providers.local import LocalProvider
    from worker.providers.openai_images import OpenAIImagesProvider
    from worker.providers.replicate import ReplicateProvider

    providers: list[Provider] = [
        LocalProvider(latency_s=settings.local_latency_s,
                      failure_rate=settings.local_failure_rate),
        ReplicateProvider(settings),
        FalProvider(settings),
        OpenAIImagesProvider(settings),
    ]
    return {p.name: p for p in providers}
