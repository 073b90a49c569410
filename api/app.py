"""The intake service: a Starlette app built from explicit parts.

``create_app(settings)`` takes concrete ``database_url`` / ``redis_url`` (the CLI resolves
embedded servers first). Its lifespan opens the asyncpg pool and the arq Redis pool once and
closes them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from api import revocations
from api.admin import routes as admin
from api.assets import routes as assets
from api.audit import routes as audit
from api.auth import ApiKeyCache
from api.catalog import routes as catalog
from api.catalog.cache import CatalogCache
from api.collections import routes as collections
from api.context import ApiContext
from api.credits import routes as credits
from api.errors import exception_handlers
from api.events import routes as events
from api.events.hub import EventHub
from api.files import routes as files
from api.health import routes as health
from api.jobs import routes as jobs
from api.jobs.intake import IntakeBatches
from api.keys import routes as keys
from api.library import routes as library
from api.library import sharing
from api.me import routes as me
from api.metrics import routes as metrics
from api.middleware import RequestContextMiddleware
from api.openapi import build_openapi, openapi_endpoint
from api.plans import routes as plans
from api.routing import Endpoint, starlette_routes
from api.tokens import TokenVerifier
from api.webhooks import routes as webhooks
from shared.db import close_pool, create_pool
from shared.errors import ConfigError
from shared.logging import get_logger
from shared.metrics import Metrics
from shared.plans import load_plans
from shared.queue import create_arq_pool
from shared.settings import Settings
from shared.storage import open_storage
from shared.storage.signing import url_signer

log = get_logger(__name__)


def endpoints(plan_names: list[str] | None = None) -> list[Endpoint]:
    """Every endpoint of the API: each resource's table, then the document describing them;
    ``plan_names``: the plans an admin may assign (the document lists them)."""
    table = [*jobs.ENDPOINTS, *credits.ENDPOINTS, *catalog.ENDPOINTS, *assets.ENDPOINTS,
             *files.ENDPOINTS, *me.ENDPOINTS, *keys.ENDPOINTS, *admin.ENDPOINTS,
             *audit.ENDPOINTS, *plans.endpoints(plan_names), *metrics.ENDPOINTS,
             *health.ENDPOINTS, *library.ENDPOINTS, *collections.ENDPOINTS, *sharing.ENDPOINTS,
             *events.ENDPOINTS, *webhooks.ENDPOINTS]
    return [*table, openapi_endpoint(build_openapi(table))]


def routes(plan_names: list[str] | None = None) -> list[Route]:
    """Every route of the API (the contract is in docs/api.md and ``/openapi.json``)."""
    return starlette_routes(endpoints(plan_names))


def middleware(settings: Settings, metrics: Metrics | None = None) -> list[Middleware]:
    """Request context (and, with ``metrics``, the request counters), and CORS for the origins
    in ``GENQ_CORS_ORIGINS`` (none: no CORS headers at all, so browsers keep the same-origin
    rule)."""
    stack = [Middleware(RequestContextMiddleware, metrics=metrics)]
    if settings.cors_origins:
        stack.insert(0, Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range",
                           "If-None-Match", "If-Range", "Last-Event-ID"],
            expose_headers=["Content-Length", "Content-Range", "Accept-Ranges", "ETag",
                            "Last-Modified", "Content-Disposition", "Retry-After"],
            max_age=600,
        ))
    return stack


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for ``settings``; connections open when its lifespan starts."""
    if settings.database_url is None or settings.redis_url is None:
        raise ConfigError("create_app needs concrete database_url and redis_url")
    database_url, redis_url = settings.database_url, settings.redis_url
    storage = open_storage(settings)
    ctx = ApiContext(
        settings=settings,
        storage=storage,
        signer=url_signer(settings, storage),
        # Not live until it is subscribed to invalidations (api.revocations).
        keys=ApiKeyCache(settings.api_key_cache_ttl_s, live=False),
        tokens=TokenVerifier(settings) if settings.jwt_enabled else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No reset query on release: the API keeps no session state on a connection. It takes
        # no session advisory locks, never LISTENs, changes settings only with
        # set_config(..., is_local => true) (gone at commit), and uses no cursors; asyncpg
        # still rolls back a transaction left open. (The scheduler's pool keeps the reset: it
        # holds session advisory locks.)
        pool = await create_pool(
            database_url, min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size, reset_on_release=False,
        )
        try:
            catalog_cache = CatalogCache(pool)
            await catalog_cache.load()
            redis = await create_arq_pool(redis_url)
            batches = IntakeBatches(pool, redis, settings)
            hub = EventHub(database_url)
            invalidations = asyncio.create_task(
                revocations.listen(redis, settings.queue_name, ctx.keys))
            try:
                await hub.start()
                ctx.attach(pool, redis, batches, catalog_cache, hub)
                log.info("api_started", queue=settings.queue_name)
                yield
            finally:
                invalidations.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await invalidations
                ctx.detach()
                await hub.close()
                await batches.drain()
                await redis.aclose()
        finally:
            await close_pool(pool)
            await ctx.storage.aclose()
            log.info("api_stopped")

    app = Starlette(
        routes=routes([p.name for p in load_plans(settings.plans_file)]),
        middleware=middleware(settings, ctx.metrics),
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    # Starlette would answer a path with a trailing slash too many (or too few) with a redirect
    # to an absolute URL built from the Host header; paths are exact here, the rest is 404.
    app.router.redirect_slashes = False
    app.state.genq = ctx
    return app
