"""The intake's snapshot of the catalog's rules (the enabled models' params schemas and
pricing)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from shared.catalog import ModelRules, load_rules
from shared.logging import get_logger

if TYPE_CHECKING:
    from shared.db import Pool

log = get_logger(__name__)

# A model the snapshot does not know makes it reload, at most this often (a client sending
# made-up model names must not cost a query each).
MISS_RELOAD_S = 5.0


class CatalogCache:
    """The enabled models' params schemas (compiled once) and pricing, loaded from the database
    when the app starts, so a submission is checked and priced without a query of its own.

    It is reloaded when ``genq_submit`` finds that a model changed since (the submission is then
    checked again), and, rate-limited, when a client asks for a model it does not know.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.rules: dict[str, ModelRules] = {}
        self.generation = 0
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read every enabled model's rules."""
        async with self.pool.acquire() as conn:
            rules = await load_rules(conn)
        self.rules, self._loaded_at = rules, time.monotonic()
        self.generation += 1
        log.info("catalog_loaded", models=len(rules), generation=self.generation)

    async def refresh(self, seen: int) -> None:
        """Reload unless another caller already did since generation ``seen``."""
        async with self._lock:
            if self.generation == seen:
                await self.load()

    async def lookup(self, key: str) -> ModelRules | None:
        """The rules of an enabled model, or None."""
        rules = self.rules.get(key)
        if rules is None and time.monotonic() - self._loaded_at >= MISS_RELOAD_S:
            await self.refresh(self.generation)
            rules = self.rules.get(key)
        return rules
