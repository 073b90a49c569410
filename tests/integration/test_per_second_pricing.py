"""Video priced per second of output: reserved on the requested duration at the intake,
captured on the real duration the worker reads from the output, the rest refunded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared.catalog import load_catalog
from shared.db import Pool
from shared.errors import ConfigError
from shared.settings import Settings
from tests.factories import add_models, assert_invariants, ledger_kinds
from tests.fakes.fal_server import FakeFal, FalScript
from tests.integration.api_support import Api, running_app
from tests.media_samples import mp4
from worker.context import WorkerContext
from worker.generation import process_job

VEO = "fal-ai/veo3"
MODELS = f"""
[[models]]
key = "fal/veo"
provider = "fal"
ref = "{VEO}"
media_type = "video"
price_per_second = 3
max_outputs = 2
timeout_s = 30
params = {{ duration = 4 }}

[models.params_schema.properties]
duration = {{ type = "integer", minimum = 1, maximum = 10, description = "Seconds." }}
"""


@pytest.fixture
def fal() -> Iterator[FakeFal]:
    server = FakeFal().start()
    server.add_file("five.mp4", mp4(fps=10, frames=50), "video/mp4")  # 5.0 s
    server.add_file("short.mp4", mp4(fps=10, frames=42), "video/mp4")  # 4.2 s
    yield server
    server.stop()


@pytest.fixture
async def api(settings: Settings, pool: Pool) -> AsyncIterator[Api]:
    # The app loads the catalog at start: this module's models come first.
    await add_models(pool, MODELS)
    async with running_app(settings) as (app, client):
        yield Api(app, client, settings, pool)


@pytest.fixture
async def wc(api: Api, fal: FakeFal) -> AsyncIterator[WorkerContext]:
    ctx = await WorkerContext.open(api.settings.model_copy(update={
        "fal_queue_url": fal.queue_url, "fal_key": SecretStr(fal.key),
        "output_allowed_hosts": ["127.0.0.1"], "provider_poll_interval_s": 0.01,
        "provider_poll_max_interval_s": 0.05, "heartbeat_s": 0.1,
    }))
    yield ctx
    await ctx.close()


async def _submit(api: Api, duration: int, credits: int = 100) -> tuple[uuid.UUID, dict[str, Any]]:
    user = await api.user(credits=credits)
    r = await api.client.post("/v1/jobs", headers=user.headers, json={
        "model": "fal/veo", "prompt": "waves at dusk", "num_outputs": 1,
        "params": {"duration": duration}})
    assert r.status_code == 202, r.text
    return user.id, r.json()


async def _job(api: Api, user_id: uuid.UUID, job_id: str) -> dict[str, Any]:
    row = await api.pool.fetchrow(
        "SELECT j.status, j.price_per_output, j.price_per_second, r.amount, r.captured, "
        "r.refunded FROM generation_jobs j JOIN credit_reservations r ON r.id = j.reservation_id "
        "WHERE j.id = $1 AND j.user_id = $2", uuid.UUID(job_id), user_id)
    assert row is not None
    assert (row["price_per_output"], row["price_per_second"]) == (row["amount"], 3)
    return dict(row)


async def test_requested_8_s_delivered_5_s_captures_5_refunds_3(
    api: Api, wc: WorkerContext, fal: FakeFal
) -> None:
    fal.script(VEO, FalScript(outputs=["five.mp4"], kind="video"))
    user_id, job = await _submit(api, duration=8)
    assert job["cost"] == {"price_per_output": 24, "reserved": 24, "captured": 0,
                           "refunded": 0}
    assert fal.submits[VEO] == 0
    assert await process_job(wc, uuid.UUID(job["id"])) == "succeeded"
    assert fal.requests_by_id["req-0001"].input["duration"] == 8

    row = await _job(api, user_id, job["id"])
    assert (row["status"], row["amount"], row["captured"], row["refunded"]) == (
        "succeeded", 24, 15, 9)
    assert await ledger_kinds(api.pool, user_id) == [
        ("grant", 100, 0), ("reserve", -24, 24), ("capture", 0, -15), ("refund", 9, -9)]
    account = await assert_invariants(api.pool, user_id)
    assert (account.balance, account.reserved) == (85, 0)


async def test_a_partial_second_counts_as_a_whole_one(api: Api, wc: WorkerContext,
                                                      fal: FakeFal) -> None:
    fal.script(VEO, FalScript(outputs=["short.mp4"], kind="video"))
    user_id, job = await _submit(api, duration=6)
    assert await process_job(wc, uuid.UUID(job["id"])) == "succeeded"
    row = await _job(api, user_id, job["id"])
    assert (row["amount"], row["captured"], row["refunded"]) == (18, 15, 3)  # 4.2 s -> 5 s


async def test_never_more_than_reserved(api: Api, wc: WorkerContext, fal: FakeFal) -> None:
    # Asked for 2 s, the model made 5 s: the user pays what was agreed, 2 s.
    fal.script(VEO, FalScript(outputs=["five.mp4"], kind="video"))
    user_id, job = await _submit(api, duration=2)
    assert await process_job(wc, uuid.UUID(job["id"])) == "succeeded"
    row = await _job(api, user_id, job["id"])
    assert (row["amount"], row["captured"], row["refunded"]) == (6, 6, 0)
    assert (await assert_invariants(api.pool, user_id)).balance == 94


async def test_duration_outside_its_bounds_is_422_and_writes_nothing(api: Api,
                                                                     wc: WorkerContext) -> None:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", headers=user.headers, json={
        "model": "fal/veo", "prompt": "waves", "params": {"duration": 60}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {"field": "params.duration", "message": "must be at most 10"}]
    assert await api.pool.fetchval("SELECT count(*) FROM generation_jobs") == 0
    assert await api.balance(user) == (100, 0)


async def test_models_publish_the_rate(api: Api, wc: WorkerContext) -> None:
    user = await api.user()
    r = await api.client.get("/v1/models", headers=user.headers)
    veo = next(m for m in r.json()["data"] if m["key"] == "fal/veo")
    # With the default params (4 s): 4 x 3 per output.
    assert (veo["price_per_second"], veo["price_per_output"]) == (3, 12)
    sketch = next(m for m in r.json()["data"] if m["key"] == "local/sketch")
    assert sketch["price_per_second"] is None


@pytest.mark.parametrize(("entry", "problem"), [
    ('media_type = "image"\nprice_per_second = 1\nparams = { duration = 4 }\n'
     '[models.params_schema.properties]\n'
     'duration = { type = "integer", minimum = 1, maximum = 10 }\n',
     "price_per_second is for video models"),
    ('media_type = "video"\nprice_per_second = 1\nparams = { duration = 4 }\n'
     '[models.params_schema.properties]\nduration = { type = "integer", minimum = 1 }\n',
     "needs params_schema to bound duration"),
    ('media_type = "video"\nprice_per_second = 1\nprice_per_output = 1\n'
     'params = { duration = 4 }\n[models.params_schema.properties]\n'
     'duration = { type = "integer", minimum = 1, maximum = 10 }\n',
     "either price_per_output or price_per_second"),
])
def test_per_second_models_are_checked_when_loaded(tmp_path: Path, entry: str,
                                                   problem: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nkey = "fal/x"\nprovider = "fal"\nref = "x"\nmax_outputs = 1\n'
                    'timeout_s = 10\n' + entry)
    with pytest.raises(ConfigError, match=problem):
        load_catalog(path)
