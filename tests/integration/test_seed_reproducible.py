"""A job sent without a seed can be made again: the seed chosen at submit is on the job and
on its outputs, and a job sent with that seed makes the same bytes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.settings import Settings
from tests.integration.api_support import Api, User, api_fixture  # noqa: F401
from worker.context import WorkerContext
from worker.generation import process_job


@pytest.fixture
async def wc(settings: Settings) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(settings)
    yield ctx
    await ctx.close()


async def _made(api: Api, wc: WorkerContext, user: User, body: dict[str, Any]
                ) -> tuple[dict[str, Any], bytes]:
    r = await api.client.post("/v1/jobs", headers=user.headers, json=body)
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["id"])
    assert await process_job(wc, job_id) == "succeeded"
    job: dict[str, Any] = (await api.client.get(f"/v1/jobs/{job_id}", headers=user.headers)
                           ).json()
    [output] = job["outputs"]
    content = await api.client.get(f"/v1/assets/{output['id']}/content", headers=user.headers)
    assert content.status_code == 200
    return job, content.content


async def test_a_seedless_job_is_reproduced_from_its_seed(api: Api, wc: WorkerContext) -> None:
    user = await api.user(credits=10)
    body = {"model": "local/sketch", "prompt": "a lighthouse at dusk"}
    first, first_bytes = await _made(api, wc, user, body)
    assert isinstance(first["seed"], int)
    assert first["outputs"][0]["seed"] == first["seed"]
    again, again_bytes = await _made(api, wc, user, {**body, "seed": first["seed"]})
    assert again["outputs"][0]["seed"] == first["seed"]
    assert again_bytes == first_bytes
