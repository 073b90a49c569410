"""What ``/v1/models`` answers: the enabled models."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.fields import ResponseModel
from shared.catalog import CatalogModel, PriceTier, price_per_output
from shared.types import AssetType


class ModelPriceTier(ResponseModel):
    """Above a size, the price of one output."""

    above_megapixels: int | float
    price_per_output: int


class Model(ResponseModel):
    """A model clients can ask for."""

    key: str
    provider: str
    media_type: AssetType
    price_per_output: int = Field(
        description="What one output costs with the default params.")
    price_per_second: int | None = Field(
        description="A video model priced per second of output: a job reserves ceil(duration) x "
                    "this per output on the requested `duration` param and is charged on each "
                    "output's real duration, rounded up to whole seconds, refunding the rest. "
                    "Null: priced per output.")
    fallback: str | None = Field(
        description="The model a job moves to, once, when this model's provider stays "
                    "unavailable after its retries.")
    price_tiers: list[ModelPriceTier] = Field(
        description="Above a size (width x height / 1e6 of the merged params), one output costs "
                    "the price of the highest tier it is above.")
    max_outputs: int
    timeout_s: int
    max_concurrency: int | None = Field(
        description="Provider calls of this model running at once across all workers; null: "
                    "no limit.")
    max_per_minute: int | None = Field(
        description="Predictions of this model created in any 60 s; null: no limit.")
    params: dict[str, Any] = Field(description="The defaults a job's params merge over.")
    params_schema: dict[str, Any] = Field(
        description="JSON Schema (Draft 2020-12) the merged params must match; keys it does not "
                    "list are refused unless it allows them.")
    description: str

    @classmethod
    def of(cls, m: CatalogModel) -> Model:
        """A catalog model as clients see it."""
        tiers = [PriceTier.model_validate(t) for t in m.price_tiers]
        return cls(
            key=m.key, provider=m.provider, media_type=AssetType(m.media_type),
            # What one output costs with the default params; price_tiers say how the params
            # change it.
            price_per_output=price_per_output(m.price_per_output, tiers, m.params,
                                              per_second=m.price_per_second),
            price_per_second=m.price_per_second, fallback=m.fallback,
            price_tiers=[ModelPriceTier.model_validate(t) for t in m.price_tiers],
            max_outputs=m.max_outputs, timeout_s=m.timeout_s,
            max_concurrency=m.max_concurrency, max_per_minute=m.max_per_minute, params=m.params,
            params_schema=m.params_schema, description=m.description,
        )


class ModelList(ResponseModel):
    """Every enabled model."""

    data: list[Model]
