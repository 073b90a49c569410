"""Provider fallback: a job whose provider stays unavailable after its retries moves, once, to
its model's fallback, and is charged the price of the model that ran."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from shared.catalog import load_catalog
from shared.db import Pool
from shared.errors import ConfigError
from shared.settings import Settings
from tests.factories import add_models, assert_invariants, ledger_kinds
from tests.fakes.fal_server import FakeFal, FalScript
from tests.fakes.openai_server import FakeOpenAIImages, ImagesScript
from tests.integration.api_support import Api, running_app
from tests.media_samples import png
from worker.context import WorkerContext
from worker.generation import process_job

FLUX = "fal-ai/flux/dev"
PRICEY = "fal-ai/cheap"


def _models(openai: FakeOpenAIImages) -> str:
    schema = """
[models.params_schema.properties]
size = { enum = ["1024x1024", "512x512"] }
"""
    return f"""
[[models]]
key = "fal/flux"
provider = "fal"
ref = "{FLUX}"
media_type = "image"
price_per_output = 3
max_outputs = 4
timeout_s = 30
params = {{ size = "1024x1024" }}
fallback = "openai/img"
{schema}
[[models]]
key = "fal/cheap"
provider = "fal"
ref = "{PRICEY}"
media_type = "image"
price_per_output = 1
max_outputs = 4
timeout_s = 30
params = {{ size = "1024x1024" }}
fallback = "openai/img"
{schema}
[[models]]
key = "openai/img"
provider = "openai"
ref = "img-1"
base_url = "{openai.base_url}"
api_key_env = "GENQ_TEST_FALLBACK_KEY"
media_type = "image"
price_per_output = 2
max_outputs = 4
timeout_s = 30
params = {{ size = "1024x1024" }}
{schema}"""


@pytest.fixture
def fal() -> Iterator[FakeFal]:
    server = FakeFal().start()
    server.add_file("a.png", png(64, 48), "image/png")
    yield server
    server.stop()


@pytest.fixture
def openai() -> Iterator[FakeOpenAIImages]:
    server = FakeOpenAIImages("sk-fallback").start()
    server.add_file("a.png", png(32, 16), "image/png")
    yield server
    server.stop()


@pytest.fixture
async def api(settings: Settings, pool: Pool, openai: FakeOpenAIImages) -> AsyncIterator[Api]:
    await add_models(pool, _models(openai))  # before the app loads the catalog
    async with running_app(settings) as (app, client):
        yield Api(app, client, settings, pool)


@pytest.fixture
async def wc(api: Api, fal: FakeFal,
             monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WorkerContext]:
    monkeypatch.setenv("GENQ_TEST_FALLBACK_KEY", "sk-fallback")
    ctx = await WorkerContext.open(api.settings.model_copy(update={
        "fal_queue_url": fal.queue_url, "fal_key": SecretStr(fal.key),
        "output_allowed_hosts": ["127.0.0.1"], "provider_max_attempts": 3,
        "provider_backoff_base_s": 0.01, "provider_backoff_max_s": 0.05,
        "provider_poll_interval_s": 0.01, "provider_poll_max_interval_s": 0.05,
        "heartbeat_s": 0.1,
    }))
    yield ctx
    await ctx.close()


async def _run(api: Api, wc: WorkerContext, model: str = "fal/flux"
               ) -> tuple[uuid.UUID, dict[str, Any]]:
    user = await api.user(credits=100)
    r = await api.client.post("/v1/jobs", headers=user.headers, json={
        "model": model, "prompt": "a lighthouse", "num_outputs": 2})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    await process_job(wc, uuid.UUID(job_id))
    got = await api.client.get(f"/v1/jobs/{job_id}", headers=user.headers)
    assert got.status_code == 200, got.text
    return user.id, got.json()


def _submits(fal: FakeFal, ref: str) -> int:
    return len([c for c in fal.calls if c == ("POST", f"/{ref}")])


async def test_primary_down_runs_once_on_the_fallback_at_its_price(
    api: Api, wc: WorkerContext, fal: FakeFal, openai: FakeOpenAIImages
) -> None:
    fal.script(FLUX, FalScript(submit_errors=[503] * 10, retry_after=None, outputs=["a.png"]))
    openai.script("img-1", ImagesScript(images=["a.png", "a.png"]))
    user_id, job = await _run(api, wc)

    assert (job["status"], job["model"], job["ran_model"]) == (
        "succeeded", "fal/flux", "openai/img")
    assert job["cost"] == {"price_per_output": 2, "reserved": 6, "captured": 4, "refunded": 2}
    assert len(job["outputs"]) == 2
    assert (_submits(fal, FLUX), fal.submits[FLUX]) == (3, 0)
    assert (len(openai.bodies), openai.generations["img-1"]) == (1, 1)
    assert openai.bodies[0] == {"model": "img-1", "prompt": "a lighthouse", "n": 2,
                                "size": "1024x1024"}
    assert await ledger_kinds(api.pool, user_id) == [
        ("grant", 100, 0), ("reserve", -6, 6), ("capture", 0, -4), ("refund", 2, -2)]
    account = await assert_invariants(api.pool, user_id)
    assert (account.balance, account.reserved) == (96, 0)
    used = await api.pool.fetch("SELECT model_used FROM workspace_assets WHERE job_id = $1",
                                uuid.UUID(job["id"]))
    assert [r["model_used"] for r in used] == ["openai/img", "openai/img"]


async def test_a_model_failure_does_not_fall_back(api: Api, wc: WorkerContext, fal: FakeFal,
                                                  openai: FakeOpenAIImages) -> None:
    fal.script(FLUX, FalScript(error="CUDA out of memory"))
    openai.script("img-1", ImagesScript(images=["a.png", "a.png"]))
    user_id, job = await _run(api, wc)
    assert (job["status"], job["error"]["code"], job["ran_model"]) == (
        "failed", "model_failed", "fal/flux")
    assert job["cost"] == {"price_per_output": 3, "reserved": 6, "captured": 0, "refunded": 6}
    assert openai.calls == []
    assert (await assert_invariants(api.pool, user_id)).balance == 100


async def test_a_dearer_fallback_is_not_used(api: Api, wc: WorkerContext, fal: FakeFal,
                                             openai: FakeOpenAIImages) -> None:
    # fal/cheap reserves 1 per output; its fallback costs 2: the job fails, refunded.
    fal.script(PRICEY, FalScript(submit_errors=[503] * 10, retry_after=None))
    openai.script("img-1", ImagesScript(images=["a.png", "a.png"]))
    user_id, job = await _run(api, wc, model="fal/cheap")
    assert (job["status"], job["error"]["code"], job["ran_model"]) == (
        "failed", "provider_unavailable", "fal/cheap")
    assert job["cost"] == {"price_per_output": 1, "reserved": 2, "captured": 0, "refunded": 2}
    assert openai.calls == []
    assert (await assert_invariants(api.pool, user_id)).balance == 100


async def test_a_fallback_that_is_down_too_fails_the_job_once(
    api: Api, wc: WorkerContext, fal: FakeFal, openai: FakeOpenAIImages
) -> None:
    fal.script(FLUX, FalScript(submit_errors=[503] * 10, retry_after=None))
    openai.script("img-1", ImagesScript(errors=[500] * 10, retry_after=None))
    user_id, job = await _run(api, wc)
    assert (job["status"], job["error"]["code"], job["ran_model"]) == (
        "failed", "provider_unavailable", "openai/img")
    assert job["cost"] == {"price_per_output": 2, "reserved": 6, "captured": 0, "refunded": 6}
    assert (_submits(fal, FLUX), len(openai.bodies)) == (3, 3)
    assert (await assert_invariants(api.pool, user_id)).balance == 100


@pytest.mark.parametrize(("fallback", "problem"), [
    ("local/nope", "'local/nope' is not in the catalog"),
    ("local/clip", "makes videos, not images"),
])
def test_fallbacks_are_checked_when_loaded(tmp_path: Any, fallback: str, problem: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nkey = "fal/x"\nprovider = "fal"\nref = "x"\n'
                    'media_type = "image"\nprice_per_output = 1\nmax_outputs = 1\n'
                    f'timeout_s = 10\nfallback = "{fallback}"\n')
    with pytest.raises(ConfigError, match=problem):
        load_catalog(path)
