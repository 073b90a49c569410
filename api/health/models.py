"""What ``/healthz`` and ``/readyz`` answer."""

from __future__ import annotations

from typing import Literal

from api.fields import Response


class Health(Response):
    """The process answers."""

    status: Literal["ok"]


class Ready(Response):
    """Postgres and Redis answer."""

    status: Literal["ready"]
    checks: dict[str, str]
