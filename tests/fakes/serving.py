"""Run a Starlette app on 127.0.0.1 in a thread (the fake providers' server)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette


class ThreadedServer:
    """``start(app)`` binds a free port on 127.0.0.1 (or ``port``, to come back where it was)
    and serves until :meth:`stop`."""

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, app: Starlette, what: str, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        # loop="asyncio": with uvloop installed, uvicorn's "auto" would set a process-wide uvloop
        # policy from this thread under the test's own asyncio loop; a cancelled client request
        # then took the full 30 s read timeout to unwind.
        config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
