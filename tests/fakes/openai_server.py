"""A fake OpenAI-style image server: a real HTTP server on 127.0.0.1 answering
``POST /v1/images/generations`` as OpenAI documents it (``{"created", "data": [{"url"} |
{"b64_json"}]}``; errors ``{"error": {"message", "type", "code"}}``).

Each model name follows an :class:`ImagesScript`; the images it returns are served under
``/files/<name>`` (``response_format = "url"``) or inlined as base64 (``"b64_json"``).
"""

from __future__ import annotations

import base64
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
class ImagesScript:
    """How generations of one model behave."""

    # Status codes answered to the first requests before one succeeds (e.g. [429], [500] * 9).
    errors: list[int] = field(default_factory=list)
    retry_after: str | None = "0"
    # The model refuses every request with 400 and this message (e.g. a safety rejection).
    refuse: str | None = None
    images: list[str] = field(default_factory=list)  # file names, one per output at most


class FakeOpenAIImages:
    """Start with :meth:`start`; ``base_url`` (``.../v1``) is what a model's base_url takes."""

    def __init__(self, key: str = "sk-test-key") -> None:
        self.key = key
        self.scripts: dict[str, ImagesScript] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.generations: Counter[str] = Counter()  # successful answers per model
        self.auth_headers: set[str] = set()
        self._errors_left: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadedServer()

    def script(self, model: str, script: ImagesScript) -> None:
        with self._lock:
            self.scripts[model] = script
            self._errors_left[model] = list(script.errors)

    def add_file(self, name: str, data: bytes, content_type: str = "image/png") -> None:
        self.files[name] = (data, content_type)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def _error(self, status: int, message: str, kind: str, code: str | None,
               retry_after: str | None = None) -> Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                       "code": code}}, status_code=status, headers=headers)

    async def _generate(self, request: Request) -> Response:
        self.calls.append((request.method, request.url.path))
        auth = request.headers.get("authorization", "")
        self.auth_headers.add(auth)
        if auth != f"Bearer {self.key}":
            return self._error(401, "Incorrect API key provided.", "invalid_request_error",
                               "invalid_api_key")
        body = await request.json()
        self.bodies.append(body)
        model = body.get("model")
        with self._lock:
            script = self.scripts.get(model) if isinstance(model, str) else None
            if script is None:
                return self._error(404, f"The model '{model}' does not exist",
                                   "invalid_request_error", "model_not_found")
            left = self._errors_left.setdefault(model, [])
            if left:
                status = left.pop(0)
                kind = "rate_limit_exceeded" if status == 429 else "server_error"
                return self._error(status, f"fake error {status}", kind, None,
                                   script.retry_after)
            if script.refuse is not None:
                return self._error(400, script.refuse, "invalid_request_error",
                                   "content_policy_violation")
            self.generations[model] += 1
        n = int(body.get("n", 1))
        data: list[dict[str, str]] = []
        for name in script.images[:n]:
            if body.get("response_format") == "b64_json":
                data.append({"b64_json": base64.b64encode(self.files[name][0]).decode()})
            else:
                data.append({"url": f"{self.root}/files/{name}"})
        return JSONResponse({"created": int(time.time()), "data": data})

    async def _file(self, request: Request) -> Response:
        self.calls.append((request.method, request.url.path))
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])

    def start(self) -> FakeOpenAIImages:
        app = Starlette(routes=[
            Route("/v1/images/generations", self._generate, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ])
        self._server.start(app, "fake OpenAI images server")
        return self

    def stop(self) -> None:
        self._server.stop()
