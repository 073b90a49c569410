"""A fake fal queue: a real HTTP server on 127.0.0.1 speaking fal's queue API.

- ``POST /{model_id}`` (``Authorization: Key <key>``) -> ``{request_id, status_url,
  response_url, cancel_url, queue_position}``;
- ``GET /{owner}/{app}/requests/{id}/status`` -> ``IN_QUEUE`` with ``queue_position``,
  ``IN_PROGRESS``, ``COMPLETED`` (with ``error`` and ``error_type`` when the model failed);
- ``GET /{owner}/{app}/requests/{id}`` -> the result, or 422 ``{"detail"}`` for a failed model;
- ``PUT /{owner}/{app}/requests/{id}/cancel`` -> 202 ``CANCELLATION_REQUESTED`` or 400
  ``ALREADY_COMPLETED``.

Each model id follows a :class:`FalScript`. The request URLs use the model id's first two
segments, as fal's do. Files named in a script are served under ``/files/<name>``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.serving import ThreadedServer


@dataclass
class FalScript:
    """How requests to one model id behave."""

    # Status codes answered to the first submits before one is accepted (e.g. [429], [503] * 9).
    submit_errors: list[int] = field(default_factory=list)
    # Status codes answered to the first status GETs of each request.
    status_errors: list[int] = field(default_factory=list)
    retry_after: str | None = "0"
    # Status GETs answered IN_QUEUE (positions counting down from queue_polls - 1 to 0), then
    # IN_PROGRESS ones, then COMPLETED.
    queue_polls: int = 0
    progress_polls: int = 1
    # While set, the request stays IN_QUEUE at position ``hold_position`` whatever the polls.
    hold: threading.Event | None = None
    hold_position: int = 3
    # Seconds a request stays IN_PROGRESS at least (for crash tests).
    min_runtime_s: float = 0.0
    error: str | None = None  # the model fails with this message
    # File names (served here) or absolute URLs; ``kind`` says where the result puts them.
    outputs: list[str] = field(default_factory=list)
    kind: str = "images"  # images | video


@dataclass
class FalRequest:
    id: str
    model: str
    input: dict[str, Any]
    created: float
    polls: int = 0
    status_errors_left: list[int] = field(default_factory=list)
    state: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED | CANCELLED


def _app(model: str) -> str:
    return "/".join(model.split("/")[:2])


class FakeFal:
    """Start with :meth:`start`, stop with :meth:`stop`; ``queue_url`` is what settings take."""

    def __init__(self, key: str = "fal-test-key") -> None:
        self.key = key
        self.scripts: dict[str, FalScript] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests_by_id: dict[str, FalRequest] = {}
        self.submits: Counter[str] = Counter()  # accepted submits per model id
        self.calls: list[tuple[str, str]] = []
        self.cancels: list[str] = []
        self.auth_headers: set[str] = set()
        self._submit_errors_left: dict[str, list[int]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadedServer()

    def script(self, model: str, script: FalScript) -> None:
        with self._lock:
            self.scripts[model] = script
            self._submit_errors_left[model] = list(script.submit_errors)

    def add_file(self, name: str, data: bytes, content_type: str) -> str:
        self.files[name] = (data, content_type)
        return f"{self.root}/files/{name}"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def queue_url(self) -> str:
        return self.root

    # -- HTTP ---------------------------------------------------------------------------------

    def _error(self, status: int, detail: Any, retry_after: str | None = None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    def _authorized(self, request: Request) -> bool:
        self.calls.append((request.method, request.url.path))
        auth = request.headers.get("authorization", "")
        self.auth_headers.add(auth)
        return auth == f"Key {self.key}"

    def _urls(self, r: FalRequest) -> dict[str, str]:
        base = f"{self.root}/{_app(r.model)}/requests/{r.id}"
        return {"status_url": f"{base}/status", "response_url": base,
                "cancel_url": f"{base}/cancel"}

    async def _submit(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "No user found for Key ID and Secret")
        model = request.path_params["model"]
        body = await request.json()
        with self._lock:
            script = self.scripts.get(model)
            if script is None:
                return self._error(404, f"Application '{model}' not found")
            left = self._submit_errors_left.setdefault(model, [])
            if left:
                return self._error(left.pop(0), "fake error", script.retry_after)
            rid = f"req-{next(self._ids):04d}"
            r = FalRequest(rid, model, body, time.monotonic(),
                           status_errors_left=list(script.status_errors))
            self.requests_by_id[rid] = r
            self.submits[model] += 1
            position = script.hold_position if script.hold is not None else max(
                0, script.queue_polls - 1)
            return JSONResponse({"request_id": rid, **self._urls(r),
                                 "queue_position": position, "status": "IN_QUEUE"})

    def _find(self, request: Request) -> tuple[FalRequest, FalScript] | None:
        r = self.requests_by_id.get(request.path_params["rid"])
        app = f"{request.path_params['owner']}/{request.path_params['app']}"
        if r is None or _app(r.model) != app:
            return None
        return r, self.scripts[r.model]

    async def _status(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "No user found for Key ID and Secret")
        with self._lock:
            found = self._find(request)
            if found is None:
                return self._error(404, "Request not found")
            r, script = found
            if r.status_errors_left:
                return self._error(r.status_errors_left.pop(0), "fake error",
                                   script.retry_after)
            r.polls += 1
            if r.state == "CANCELLED":
                return JSONResponse({"status": "COMPLETED", "error": "Request was cancelled",
                                     "error_type": "request_cancelled"})
            if script.hold is not None and script.hold.is_set():
                return JSONResponse({"status": "IN_QUEUE", "queue_position": script.hold_position,
                                     "response_url": self._urls(r)["response_url"]})
            if r.state != "COMPLETED":
                if r.polls <= script.queue_polls:
                    r.state = "IN_QUEUE"
                    return JSONResponse({"status": "IN_QUEUE",
                                         "queue_position": script.queue_polls - r.polls,
                                         "response_url": self._urls(r)["response_url"]})
                running = time.monotonic() - r.created < script.min_runtime_s
                if r.polls <= script.queue_polls + script.progress_polls or running:
                    r.state = "IN_PROGRESS"
                    return JSONResponse({"status": "IN_PROGRESS", "logs": None})
                r.state = "COMPLETED"
            body: dict[str, Any] = {"status": "COMPLETED", "logs": None,
                                    "metrics": {"inference_time": 0.1}}
            if script.error is not None:
                body.update(error=script.error, error_type="model_error")
            return JSONResponse(body)

    async def _result(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "No user found for Key ID and Secret")
        with self._lock:
            found = self._find(request)
            if found is None:
                return self._error(404, "Request not found")
            r, script = found
            if r.state != "COMPLETED":
                return self._error(400, "Request is still in progress")
            if script.error is not None:
                return self._error(422, script.error)
            urls = [o if "://" in o else f"{self.root}/files/{o}" for o in script.outputs]
            if script.kind == "video":
                return JSONResponse({"video": {"url": urls[0], "content_type": "video/mp4"}})
            return JSONResponse({"images": [{"url": u, "content_type": "image/png"}
                                            for u in urls],
                                 "seed": r.input.get("seed"), "has_nsfw_concepts": []})

    async def _cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "No user found for Key ID and Secret")
        with self._lock:
            found = self._find(request)
            if found is None:
                return self._error(404, "Request not found")
            r, _script = found
            self.cancels.append(r.id)
            if r.state in ("COMPLETED", "CANCELLED"):
                return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
            r.state = "CANCELLED"
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def _file(self, request: Request) -> Response:
        self.calls.append((request.method, request.url.path))
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])

    def start(self) -> FakeFal:
        app = Starlette(routes=[
            Route("/files/{name}", self._file, methods=["GET"]),
            Route("/{owner}/{app}/requests/{rid}/status", self._status, methods=["GET"]),
            Route("/{owner}/{app}/requests/{rid}/cancel", self._cancel, methods=["PUT"]),
            Route("/{owner}/{app}/requests/{rid}", self._result, methods=["GET"]),
            Route("/{model:path}", self._submit, methods=["POST"]),
        ])
        self._server.start(app, "fake fal")
        return self

    def stop(self) -> None:
        self._server.stop()
