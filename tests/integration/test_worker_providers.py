"""A worker builds the providers its catalog names, and no other."""

from __future__ import annotations

from shared.db import Pool
from shared.settings import Settings
from tests.factories import add_models
from worker.context import WorkerContext


async def test_only_the_providers_the_catalog_names_are_built(settings: Settings,
                                                              pool: Pool) -> None:
    ctx = await WorkerContext.open(settings)
    try:
        assert sorted(ctx.providers) == ["local"]  # the built-in models
    finally:
        await ctx.close()
    await add_models(pool, """
[[models]]
key = "fal/a"
provider = "fal"
ref = "fal-ai/a"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 10

[[models]]
key = "openai/b"
provider = "openai"
ref = "b"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "B_KEY"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 10
enabled = false

[[models]]
key = "acme/c"
provider = "acme"
ref = "c"
media_type = "image"
price_per_output = 1
max_outputs = 1
timeout_s = 10
""")
    ctx = await WorkerContext.open(settings)
    try:
        # A disabled model's queued jobs still run; a provider genq does not have is left out.
        assert sorted(ctx.providers) == ["fal", "local", "openai"]
    finally:
        await ctx.close()
