"""Running the intake service as a process: resolve services, migrate, serve with uvicorn."""

from __future__ import annotations

import contextlib
import gc
import signal
from types import FrameType

import uvicorn
import uvloop
from starlette.types import ASGIApp

from api.app import create_app
from api.protocol import HttpLimits, protocol_class
from shared.logging import get_logger
from shared.services import running_services
from shared.settings import Settings

log = get_logger(__name__)

# The collector's thresholds in the serving process: the youngest generation is collected once
# 10,000 more container objects were made than freed (Python's default is 700), each older one
# after 20 collections of the one below (default 10).
GC_THRESHOLDS = (10_000, 20, 20)


class _Terminated(Exception):
    """SIGTERM arrived."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def server_config(app: ASGIApp, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """How uvicorn serves ``app``: genq's HTTP protocol under the settings' limits."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(HttpLimits.from_settings(settings)),
        lifespan="on",
        # structlog is configured by the CLI; the app logs each request itself.
        log_config=None,
        access_log=False,
        server_header=False,
    )


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM; stop the embedded servers this process started.

    Returns 0 after a clean shutdown, 1 if the app failed to start.
    """

    async def run() -> int:
        async with running_services(settings) as running:
            config = server_config(create_app(running.settings), running.settings,
                                   host=host, port=port)
            # What is alive once the app is built (modules, the route table, settings) stays
            # alive: out of the collector's generations, so no collection walks it again.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            server = uvicorn.Server(config)
            log.info("api_listening", host=host, port=port)
            with contextlib.suppress(_Terminated):
                await server.serve()
            return 0 if server.started else 1

    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal under the handler
    # it found; with the default one the process would die before stopping embedded servers.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        # The loop uvicorn's "auto" picks (uvloop is a dependency).
        return uvloop.run(run())
    except _Terminated:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
