"""What ``/healthz`` and ``/readyz`` answer."""

from __future__ import annotations

from typing import Literal

from api.fields import ResponseModel


class Health(ResponseModel):
    """The process answers."""

    status: Literal["ok"]


class Ready(ResponseModel):
    """Postgres and Redis answer."""

    status: Literal["ready"]
    checks: dict[str, str]
