"""``/v1/models``: the enabled models clients can ask for, with prices, limits and the params
each accepts."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from api.query import QueryParams
from api.routing import Call, Endpoint, Reply
from shared.catalog import PriceTier, list_models, price_per_output


async def get_models(call: Call) -> Response:
    """GET /v1/models."""
    QueryParams(call.request, ())  # takes no parameters: any is a 422, not silently ignored
    async with call.ctx.pool.acquire() as conn:
        models = await list_models(conn)
    return JSONResponse({"data": [
        {
            "key": m.key,
            "provider": m.provider,
            "media_type": m.media_type,
            # What one output costs with the default params; price_tiers say how the params
            # change it.
            "price_per_output": price_per_output(
                m.price_per_output, [PriceTier.model_validate(t) for t in m.price_tiers],
                m.params,
            ),
            "price_tiers": m.price_tiers,
            "max_outputs": m.max_outputs,
            "timeout_s": m.timeout_s,
            "params": m.params,
            "params_schema": m.params_schema,
            "description": m.description,
        }
        for m in models
    ]})


ENDPOINTS = [
    Endpoint("GET", "/v1/models", get_models, "listModels", "The model catalog",
             {200: Reply("Enabled models")}),
]
