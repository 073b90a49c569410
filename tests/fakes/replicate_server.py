"""A fake Replicate: a real HTTP server on 127.0.0.1 speaking the predictions API.

Each model (``owner/name``) follows a :class:`Script`: how create answers, how many polls stay
``processing``, how the prediction ends, and which files its outputs point to. The server also
serves those files itself under ``/files/<name>``, and counts every request it gets.

Tests start it in a thread (:meth:`FakeReplicate.start`); the benchmarks run it as a process of
its own, one scripted model, its counts at ``GET /_fake/stats``::

    python -m tests.fakes.replicate_server --port 8123 --model acme/slow --min-runtime-s 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.serving import ThreadedServer


@dataclass
class FakeFile:
    """A file the fake serves: its bytes and the Content-Type it claims."""

    data: bytes
    content_type: str = "application/octet-stream"
    # Send it in 64 KiB chunks with no Content-Length (Transfer-Encoding: chunked).
    chunked: bool = False


@dataclass
class Script:
    """How predictions of one model behave."""

    # Status codes answered to the first creates, before one succeeds (e.g. [429], [500] * 9).
    create_errors: list[int] = field(default_factory=list)
    # Status codes answered to the first GETs of each prediction.
    get_errors: list[int] = field(default_factory=list)
    retry_after: str | None = "0"
    # GETs that still say starting/processing before the end.
    polls: int = 1
    # Seconds the prediction stays processing at least (for crash tests).
    min_runtime_s: float = 0.0
    final: str = "succeeded"  # succeeded | failed | canceled
    error: str = "the model crashed"
    # File names (served here) or absolute URLs, one per output.
    outputs: list[str] = field(default_factory=list)
    # The provider's own rate limit: a create past this many in the last 60 s is a 429.
    max_creates_per_minute: int | None = None
    # Seconds each GET of a prediction takes to answer (GETs then overlap, and the most at
    # once is counted).
    get_delay_s: float = 0.0


@dataclass
class FakePrediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created: float
    gets: int = 0
    get_errors_left: list[int] = field(default_factory=list)
    status: str = "starting"


class FakeReplicate:
    """Start with :meth:`start`, stop with :meth:`stop`; ``base_url`` is what settings take."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.files: dict[str, FakeFile] = {}
        self.redirects: dict[str, str] = {}
        self.predictions: dict[str, FakePrediction] = {}
        self.creates: Counter[str] = Counter()  # successful creates per model
        # When each successful create arrived (time.monotonic()), per model.
        self.create_times: dict[str, list[float]] = {}
        # Creates refused for the model's rate limit (Script.max_creates_per_minute).
        self.rate_limited: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.cancels: list[str] = []
        self.auth_headers: set[str] = set()
        # GETs of predictions being answered now, and the most there ever were at once.
        self.gets_in_flight = 0
        self.max_gets_in_flight = 0
        # GETs of a prediction that had already ended when the GET came.
        self.gets_after_end = 0
        self._create_errors_left: dict[str, list[int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadedServer()

    # -- scripting ----------------------------------------------------------------------------

    def script(self, model: str, script: Script) -> None:
        """Set how ``model`` behaves from now on."""
        with self._lock:
            self.scripts[model] = script
            self._create_errors_left[model] = list(script.create_errors)

    def add_file(self, name: str, data: bytes, content_type: str = "image/png",
                 *, chunked: bool = False) -> str:
        """Serve ``data`` at ``/files/<name>``; returns its URL."""
        self.files[name] = FakeFile(data, content_type, chunked)
        return self.file_url(name)

    def add_redirect(self, name: str, location: str) -> str:
        """Answer ``/files/<name>`` with a 302 to ``location``; returns its URL."""
        self.redirects[name] = location
        return self.file_url(name)

    def file_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- HTTP ---------------------------------------------------------------------------------

    def _json(self, p: FakePrediction, **extra: Any) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/v1/predictions/{p.id}"
        body: dict[str, Any] = {
            "id": p.id, "model": p.model, "version": p.version, "status": p.status,
            "input": p.input, "output": None, "error": None, "logs": "", "metrics": {},
            "created_at": "2026-01-01T00:00:00.000Z", "started_at": None, "completed_at": None,
            "urls": {"get": url, "cancel": url + "/cancel"},
        }
        body.update(extra)
        return body

    def _error(self, status: int, retry_after: str | None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return JSONResponse(
            {"title": "Error", "detail": f"fake error {status}", "status": status},
            status_code=status, headers=headers, media_type="application/problem+json",
        )

    def _create(self, model: str, body: dict[str, Any], version: str) -> Response:
        with self._lock:
            script = self.scripts.get(model)
            if script is None:
                return self._error(404, None)
            left = self._create_errors_left.setdefault(model, [])
            if left:
                return self._error(left.pop(0), script.retry_after)
            now = time.monotonic()
            times = self.create_times.setdefault(model, [])
            if script.max_creates_per_minute is not None and sum(
                    1 for t in times if t > now - 60) >= script.max_creates_per_minute:
                self.rate_limited[model] += 1
                return self._error(429, "1")
            times.append(now)
            pid = f"pred{next(self._ids):04d}"
            p = FakePrediction(pid, model, version, body.get("input") or {}, now,
                               get_errors_left=list(script.get_errors))
            self.predictions[pid] = p
            self.creates[model] += 1
            return JSONResponse(self._json(p), status_code=201)

    async def _create_for_model(self, request: Request) -> Response:
        self._record(request)
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return self._create(model, await request.json(), "hidden")

    async def _create_for_version(self, request: Request) -> Response:
        self._record(request)
        body = await request.json()
        version = str(body.get("version", ""))
        # Versions are scripted under "version:<id>".
        return self._create(f"version:{version}", body, version)

    def _outputs(self, script: Script) -> list[str]:
        return [o if "://" in o else self.file_url(o) for o in script.outputs]

    async def _get(self, request: Request) -> Response:
        self._record(request)
        with self._lock:
            self.gets_in_flight += 1
            self.max_gets_in_flight = max(self.max_gets_in_flight, self.gets_in_flight)
        try:
            p = self.predictions.get(request.path_params["pid"])
            if p is not None and self.scripts[p.model].get_delay_s:
                await asyncio.sleep(self.scripts[p.model].get_delay_s)
            return self._answer_get(request.path_params["pid"])
        finally:
            with self._lock:
                self.gets_in_flight -= 1

    def _answer_get(self, pid: str) -> Response:
        with self._lock:
            p = self.predictions.get(pid)
            if p is None:
                return self._error(404, None)
            script = self.scripts[p.model]
            if p.get_errors_left:
                return self._error(p.get_errors_left.pop(0), script.retry_after)
            p.gets += 1
            if p.status in ("starting", "processing"):
                done = (p.gets > script.polls
                        and time.monotonic() - p.created >= script.min_runtime_s)
                p.status = script.final if done else "processing"
            else:
                self.gets_after_end += 1
            if p.status == "succeeded":
                return JSONResponse(self._json(p, output=self._outputs(script),
                                               completed_at="2026-01-01T00:00:02Z"))
            if p.status == "failed":
                return JSONResponse(self._json(p, error=script.error,
                                               completed_at="2026-01-01T00:00:02Z"))
            return JSONResponse(self._json(p))

    async def _cancel(self, request: Request) -> Response:
        self._record(request)
        with self._lock:
            p = self.predictions.get(request.path_params["pid"])
            if p is None:
                return self._error(404, None)
            self.cancels.append(p.id)
            if p.status in ("starting", "processing"):
                p.status = "canceled"
            return JSONResponse(self._json(p))

    async def _file(self, request: Request) -> Response:
        self._record(request)
        location = self.redirects.get(request.path_params["name"])
        if location is not None:
            return Response(status_code=302, headers={"Location": location})
        f = self.files.get(request.path_params["name"])
        if f is None:
            return Response(status_code=404)
        if f.chunked:
            data = f.data

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(data), 65536):
                    yield data[start:start + 65536]

            return StreamingResponse(chunks(), media_type=f.content_type)
        return Response(f.data, media_type=f.content_type)

    @property
    def prediction_gets(self) -> int:
        """GETs of predictions answered so far (errors included)."""
        return sum(1 for method, path in list(self.requests)
                   if method == "GET" and path.startswith("/v1/predictions/"))

    async def _stats(self, _request: Request) -> Response:
        with self._lock:
            creates = sum(self.creates.values())
        return JSONResponse({"creates": creates, "prediction_gets": self.prediction_gets,
                             "requests": len(self.requests), "cancels": len(self.cancels)})

    def _record(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path))
        auth = request.headers.get("authorization")
        if auth and request.url.path.startswith("/v1/"):
            self.auth_headers.add(auth)

    # -- lifecycle ----------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The server's routes."""
        return Starlette(routes=[
            Route("/v1/models/{owner}/{name}/predictions", self._create_for_model,
                  methods=["POST"]),
            Route("/v1/predictions", self._create_for_version, methods=["POST"]),
            Route("/v1/predictions/{pid}", self._get, methods=["GET"]),
            Route("/v1/predictions/{pid}/cancel", self._cancel, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
            Route("/_fake/stats", self._stats, methods=["GET"]),
        ])

    def start(self) -> FakeReplicate:
        self._server.start(self.app(), "fake Replicate")
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def port(self) -> int:
        """The port it serves on (0 before :meth:`start`)."""
        return self._server.port


def main(argv: list[str] | None = None) -> None:
    """Serve one scripted model on ``--port`` until killed; every prediction takes at least
    ``--min-runtime-s`` and succeeds with one small PNG output."""
    from tests.media_samples import png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="acme/slow")
    parser.add_argument("--min-runtime-s", type=float, default=2.0)
    parser.add_argument("--polls", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeReplicate()
    fake._server.port = args.port  # the URLs it hands out name this port
    fake.add_file("out.png", png(8, 8))
    fake.script(args.model, Script(polls=args.polls, min_runtime_s=args.min_runtime_s,
                                   outputs=["out.png"]))
    # In a process of its own the fastest loop and parser uvicorn finds are fine.
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
