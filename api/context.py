"""What every handler needs, opened once by the app's lifespan: the settings, storage and URL
signer, and the services the handlers stand on (key cache, catalog snapshot, intake). It sits
below the handlers: it imports none of them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from api.auth import ApiKeyCache
from api.jobs.intake import Intake
from api.tokens import TokenVerifier
from shared.metrics import Metrics
from shared.storage import Storage
from shared.storage.signing import UrlSigner

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from api.catalog.cache import CatalogCache
    from api.events.hub import EventHub
    from api.jobs.intake import IntakeBatches
    from shared.db import Pool
    from shared.settings import Settings


@dataclass
class ApiContext:
    """The settings and the open connections of one app instance."""

    settings: Settings
    storage: Storage
    signer: UrlSigner
    keys: ApiKeyCache
    #: Verifies user JWTs (None: sign-in with the identity provider's tokens is off).
    tokens: TokenVerifier | None = None
    #: This process's Prometheus series (GET /metrics).
    metrics: Metrics = field(default_factory=Metrics)
    _pool: Pool | None = field(default=None, repr=False)
    _redis: ArqRedis | None = field(default=None, repr=False)
    _batches: IntakeBatches | None = field(default=None, repr=False)
    _catalog: CatalogCache | None = field(default=None, repr=False)
    _events: EventHub | None = field(default=None, repr=False)
    # User id -> (their plan's submissions per minute, None for the setting; when to look
    # again), kept as long as a verified API key.
    plan_rates: dict[uuid.UUID, tuple[int | None, float]] = field(default_factory=dict,
                                                                repr=False)

    def attach(self, pool: Pool, redis: ArqRedis, batches: IntakeBatches,
               catalog: CatalogCache, events: EventHub) -> None:
        """Use these connections (called by the lifespan once both are open)."""
        self._pool, self._redis, self._batches = pool, redis, batches
        self._catalog, self._events = catalog, events

    async def content_url(self, key: str) -> str:
        """The signed URL a browser loads ``key`` from, without an Authorization header."""
        return await self.signer.signed_url(self.storage, key)

    def detach(self) -> None:
        """Forget the connections (the lifespan closes them)."""
        self._pool = self._redis = self._batches = self._catalog = self._events = None

    @property
    def pool(self) -> Pool:
        """The asyncpg pool (open between lifespan startup and shutdown)."""
        if self._pool is None:
            raise RuntimeError("the database pool is not open: is the lifespan running?")
        return self._pool

    @property
    def redis(self) -> ArqRedis:
        """The arq Redis pool (open between lifespan startup and shutdown)."""
        if self._redis is None:
            raise RuntimeError("the Redis pool is not open: is the lifespan running?")
        return self._redis

    @property
    def batches(self) -> IntakeBatches:
        """The intake's group commit (open between lifespan startup and shutdown)."""
        if self._batches is None:
            raise RuntimeError("the intake batches are not open: is the lifespan running?")
        return self._batches

    @property
    def catalog(self) -> CatalogCache:
        """The catalog's rules the intake checks and prices with (loaded at startup)."""
        if self._catalog is None:
            raise RuntimeError("the catalog is not loaded: is the lifespan running?")
        return self._catalog

    @property
    def events(self) -> EventHub:
        """This process's live job events (following the table between lifespan startup and
        shutdown)."""
        if self._events is None:
            raise RuntimeError("the event hub is not running: is the lifespan running?")
        return self._events

    @property
    def intake(self) -> Intake:
        """The write side of jobs (submit and cancel)."""
        return Intake(self.pool, self.batches, self.catalog, self.content_url)


def context(request: Request) -> ApiContext:
    """The context of the app serving ``request``."""
    ctx = request.app.state.genq
    assert isinstance(ctx, ApiContext)
    return ctx
