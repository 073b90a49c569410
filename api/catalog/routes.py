"""``/v1/models``: the enabled models clients can ask for, with prices, limits and the params
each accepts."""

from __future__ import annotations

from starlette.responses import Response

from api.catalog.models import Model, ModelList
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY
from shared.catalog import list_models


async def get_models(call: Call) -> Response:
    """GET /v1/models."""
    QueryParams(call.request, ())  # takes no parameters: any is a 422, not silently ignored
    async with call.ctx.pool.acquire() as conn:
        models = await list_models(conn)
    return reply(ModelList(data=[Model.of(m) for m in models]))


ENDPOINTS = [
    Endpoint("GET", "/v1/models", get_models, "listModels", "The model catalog",
             {200: Reply("Enabled models", ModelList)},
             description="Takes no query parameters: any is 422 validation_error.",
             errors={422: BAD_QUERY}),
]
