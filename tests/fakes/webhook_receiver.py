"""A webhook receiver on 127.0.0.1, as a genq client would run one: every POST is verified with
the ``standardwebhooks`` package against the secrets it was given, and recorded.

``answer`` sets what it replies (a status code), ``hang`` makes it never answer, ``stop()`` and
``start()`` take it down and bring it back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.serving import ThreadedServer


@dataclass(frozen=True)
class Delivery:
    """One POST as the receiver saw it."""

    webhook_id: str
    type: str
    job_id: str
    body: dict[str, Any]
    #: Which of the receiver's secrets verified it (by their index).
    verified_by: tuple[int, ...]
    received_at: float


class WebhookReceiver:
    """Records every delivery; ``url`` is where to point ``webhook_url``."""

    def __init__(self, secrets: list[str] | None = None, *, status: int = 200) -> None:
        self.secrets = list(secrets or [])
        self.status = status
        self.hang = False
        self.deliveries: list[Delivery] = []
        self.unverified = 0
        self._lock = threading.Lock()
        self._server = ThreadedServer()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/genq"

    async def _receive(self, request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        verified = []
        for i, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(raw, headers)
            except WebhookVerificationError:
                continue
            verified.append(i)
        body = json.loads(raw)
        with self._lock:
            if not verified:
                self.unverified += 1
            self.deliveries.append(Delivery(
                headers["webhook-id"], body["type"], body["data"]["id"], body, tuple(verified),
                time.monotonic(),
            ))
        if self.hang:
            await asyncio.sleep(3600)
        return Response(status_code=self.status)

    def start(self) -> WebhookReceiver:
        self._server.start(Starlette(routes=[Route("/hooks/genq", self._receive,
                                                   methods=["POST"])]),
                           "webhook receiver", port=self.port)
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._server.stop()

    def seen(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)
