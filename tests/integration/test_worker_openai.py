"""The OpenAI-style images provider against fake OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import load_catalog
from shared.db import Pool
from shared.errors import ConfigError
from shared.settings import Settings
from tests.factories import (
    NewJob,
    add_models,
    assert_invariants,
    assets_of,
    create_job,
    job_row,
    ledger_kinds,
    local,
)
from tests.fakes.openai_server import FakeOpenAIImages, ImagesScript
from tests.media_samples import jpeg, png
from worker.context import WorkerContext
from worker.generation import process_job


def _models(one: FakeOpenAIImages, two: FakeOpenAIImages) -> str:
    return f"""
[[models]]
key = "openai/img"
provider = "openai"
ref = "img-1"
base_url = "{one.base_url}"
api_key_env = "GENQ_TEST_ONE_KEY"
media_type = "image"
price_per_output = 4
max_outputs = 4
timeout_s = 30
params = {{ size = "1024x1024" }}

[models.params_schema.properties]
size = {{ enum = ["1024x1024", "1536x1024"] }}

[[models]]
key = "openai/img-b64"
provider = "openai"
ref = "img-1"
base_url = "{one.base_url}"
api_key_env = "GENQ_TEST_ONE_KEY"
media_type = "image"
price_per_output = 4
max_outputs = 4
timeout_s = 30
params = {{ size = "1024x1024", response_format = "b64_json" }}

[[models]]
key = "together/flux"
provider = "openai"
ref = "black-forest-labs/FLUX.1-schnell"
base_url = "{two.base_url}/"
api_key_env = "GENQ_TEST_TWO_KEY"
media_type = "image"
price_per_output = 2
max_outputs = 4
timeout_s = 30
"""


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIImages, FakeOpenAIImages]]:
    one, two = FakeOpenAIImages("sk-one").start(), FakeOpenAIImages("tg-two").start()
    for server in (one, two):
        server.add_file("a.png", png(64, 48), "image/png")
        server.add_file("b.jpg", jpeg(32, 16), "image/jpeg")
    yield one, two
    one.stop()
    two.stop()


@pytest.fixture
def one(servers: tuple[FakeOpenAIImages, FakeOpenAIImages]) -> FakeOpenAIImages:
    return servers[0]


@pytest.fixture
async def wc(settings: Settings, pool: Pool, monkeypatch: pytest.MonkeyPatch,
             servers: tuple[FakeOpenAIImages, FakeOpenAIImages]
             ) -> AsyncIterator[WorkerContext]:
    monkeypatch.setenv("GENQ_TEST_ONE_KEY", "sk-one")
    monkeypatch.setenv("GENQ_TEST_TWO_KEY", "tg-two")
    await add_models(pool, _models(*servers))
    ctx = await WorkerContext.open(settings.model_copy(update={
        "output_allowed_hosts": ["127.0.0.1"],
        "provider_max_attempts": 3,
        "provider_backoff_base_s": 0.01,
        "provider_backoff_max_s": 0.05,
        "heartbeat_s": 0.1,
    }))
    yield ctx
    await ctx.close()


async def _job(pool: Pool, n: int = 2, model: str = "openai/img",
               params: dict[str, Any] | None = None) -> NewJob:
    return await create_job(pool, model=model, num_outputs=n, credits=100, seed=5, params=params)


async def _assert_failed_and_refunded(pool: Pool, job: NewJob, code: str) -> dict[str, Any]:
    row = await job_row(pool, job.id)
    assert (row["status"], row["error_code"], row["outputs_made"]) == ("failed", code, 0)
    assert await assets_of(pool, job.id) == []
    kinds = await ledger_kinds(pool, job.user_id)
    assert kinds[-1][0] == "refund" and all(k != "capture" for k, _, _ in kinds)
    account = await assert_invariants(pool, job.user_id)
    assert (account.balance, account.reserved) == (100, 0)
    return row


async def test_url_outputs(pool: Pool, wc: WorkerContext, one: FakeOpenAIImages) -> None:
    one.script("img-1", ImagesScript(images=["a.png", "b.jpg"]))
    job = await _job(pool, params={"size": "1536x1024"})
    assert await process_job(wc, job.id) == "succeeded"
    assert one.auth_headers == {"Bearer sk-one"}
    assert one.bodies == [{"model": "img-1", "prompt": "a red fox in the snow", "n": 2,
                           "size": "1536x1024"}]
    assets = await assets_of(pool, job.id)
    assert [(a["mime_type"], a["width"], a["height"]) for a in assets] == [
        ("image/png", 64, 48), ("image/jpeg", 32, 16)]
    assert local(wc.stager.storage).path(assets[1]["storage_key"]).read_bytes() == \
        one.files["b.jpg"][0]
    assert (await assert_invariants(pool, job.user_id)).balance == 92


async def test_b64_json_outputs(pool: Pool, wc: WorkerContext, one: FakeOpenAIImages) -> None:
    one.script("img-1", ImagesScript(images=["a.png", "b.jpg"]))
    job = await _job(pool, model="openai/img-b64")
    assert await process_job(wc, job.id) == "succeeded"
    assert one.bodies[0]["response_format"] == "b64_json"
    # Nothing was downloaded: the bytes came in the answer.
    assert [c for c in one.calls if c[1].startswith("/files/")] == []
    assets = await assets_of(pool, job.id)
    assert [a["mime_type"] for a in assets] == ["image/png", "image/jpeg"]
    assert local(wc.stager.storage).path(assets[0]["storage_key"]).read_bytes() == \
        one.files["a.png"][0]


async def test_two_servers_each_with_its_own_key(
    pool: Pool, wc: WorkerContext, servers: tuple[FakeOpenAIImages, FakeOpenAIImages]
) -> None:
    one, two = servers
    one.script("img-1", ImagesScript(images=["a.png"]))
    two.script("black-forest-labs/FLUX.1-schnell", ImagesScript(images=["b.jpg"]))
    first, second = await _job(pool, n=1), await _job(pool, n=1, model="together/flux")
    assert await process_job(wc, first.id) == "succeeded"
    assert await process_job(wc, second.id) == "succeeded"
    assert (one.auth_headers, two.auth_headers) == ({"Bearer sk-one"}, {"Bearer tg-two"})
    assert two.calls[0] == ("POST", "/v1/images/generations")
    assert (await assert_invariants(pool, second.user_id)).balance == 98


async def test_a_refusal_fails_at_once(pool: Pool, wc: WorkerContext,
                                       one: FakeOpenAIImages) -> None:
    one.script("img-1", ImagesScript(refuse="Your request was rejected by the safety system."))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "provider_rejected")
    assert "HTTP 400: Your request was rejected by the safety system." in row["error_message"]
    assert len(one.bodies) == 1


async def test_429_with_retry_after_then_success(pool: Pool, wc: WorkerContext,
                                                 one: FakeOpenAIImages) -> None:
    one.script("img-1", ImagesScript(errors=[429], retry_after="1", images=["a.png"]))
    job = await _job(pool, n=1)
    started = time.monotonic()
    assert await process_job(wc, job.id) == "succeeded"
    # The backoff alone would have waited at most provider_backoff_max_s (0.05 s).
    assert time.monotonic() - started >= 1.0
    assert (len(one.bodies), one.generations["img-1"]) == (2, 1)
    assert (await assert_invariants(pool, job.user_id)).balance == 96


async def test_5xx_until_attempts_run_out(pool: Pool, wc: WorkerContext,
                                          one: FakeOpenAIImages) -> None:
    one.script("img-1", ImagesScript(errors=[500] * 10, retry_after=None))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "provider_unavailable")
    assert "3 attempts" in row["error_message"]
    assert (len(one.bodies), one.generations["img-1"]) == (3, 0)


async def test_a_key_variable_that_is_not_set(pool: Pool, wc: WorkerContext,
                                              one: FakeOpenAIImages,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENQ_TEST_ONE_KEY")
    one.script("img-1", ImagesScript(images=["a.png"]))
    job = await _job(pool)
    assert await process_job(wc, job.id) == "failed"
    row = await _assert_failed_and_refunded(pool, job, "provider_not_configured")
    assert "GENQ_TEST_ONE_KEY" in row["error_message"]
    assert one.calls == []


def test_an_openai_model_needs_its_server_and_key_variable(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nkey = "openai/x"\nprovider = "openai"\nref = "x"\n'
                    'media_type = "image"\nprice_per_output = 1\nmax_outputs = 1\n'
                    'timeout_s = 10\n')
    with pytest.raises(ConfigError, match="needs base_url and api_key_env"):
        load_catalog(path)
    path.write_text('[[models]]\nkey = "fal/x"\nprovider = "fal"\nref = "x"\n'
                    'media_type = "image"\nprice_per_output = 1\nmax_outputs = 1\n'
                    'timeout_s = 10\nbase_url = "http://127.0.0.1:1/v1"\n')
    with pytest.raises(ConfigError, match='for provider = "openai" only'):
        load_catalog(path)
