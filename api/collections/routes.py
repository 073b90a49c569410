"""``/v1/collections``: the caller's collections of library items."""

from __future__ import annotations

import uuid

import asyncpg
from starlette.responses import Response

from api.collections.models import Collection, CollectionCreate, CollectionPage, CollectionUpdate
from api.errors import CollectionNotFound
from api.pagination import (
    PAGE_PARAMS,
    decode_time_cursor,
    page_limit,
    time_page,
)
from api.query import QueryParams
from api.routing import Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, PAGE_PARAMETERS, QUERY_RULES, path_id
from api.validation import path_uuid
from shared.errors import CollectionNameTaken
from sql import queries


def _path_id(call: Call) -> uuid.UUID:
    """The ``{collection_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "collection_id", CollectionNotFound)


async def post_collection(call: Call) -> Response:
    """POST /v1/collections: 201; a name the caller already uses is 409."""
    body = await call.body(CollectionCreate)
    async with call.ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["create_collection"], call.user, body.name,
                                  body.description)
    if row is None:
        raise CollectionNameTaken(f"you already have a collection named {body.name!r}")
    return reply(Collection.from_row(row), 201, {"Location": f"/v1/collections/{row['id']}"})


async def get_collections(call: Call) -> Response:
    """GET /v1/collections: newest first."""
    query = QueryParams(call.request, PAGE_PARAMS)
    limit = page_limit(query)
    created_at, last_id = query.get("cursor", decode_time_cursor) or (None, None)
    async with call.ctx.pool.acquire() as conn:
        rows = await conn.fetch(queries["list_collections"], call.user, created_at, last_id,
                                limit + 1)
    page, next_cursor = time_page(rows, limit)
    return reply(CollectionPage(data=[Collection.from_row(r) for r in page],
                                next_cursor=next_cursor))


async def get_collection(call: Call) -> Response:
    """GET /v1/collections/{collection_id}."""
    collection_id = _path_id(call)
    async with call.ctx.pool.acquire() as conn:
        row = await conn.fetchrow(queries["get_collection"], collection_id, call.user)
    if row is None:
        raise CollectionNotFound.of(collection_id)
    return reply(Collection.from_row(row))


async def patch_collection(call: Call) -> Response:
    """PATCH /v1/collections/{collection_id}: name and/or description."""
    collection_id = _path_id(call)
    body = await call.body(CollectionUpdate)
    given = body.model_fields_set
    try:
        async with call.ctx.pool.acquire() as conn:
            row = await conn.fetchrow(
                queries["update_collection"], collection_id, call.user, "name" in given,
                body.name, "description" in given, body.description,
            )
    except asyncpg.UniqueViolationError as exc:
        raise CollectionNameTaken(f"you already have a collection named {body.name!r}") from exc
    if row is None:
        raise CollectionNotFound.of(collection_id)
    return reply(Collection.from_row(row))


async def delete_collection(call: Call) -> Response:
    """DELETE /v1/collections/{collection_id}: 204; its items stay, in no collection."""
    collection_id = _path_id(call)
    async with call.ctx.pool.acquire() as conn:
        gone = await conn.fetchval(queries["delete_collection"], collection_id, call.user)
    if gone is None:
        raise CollectionNotFound.of(collection_id)
    return Response(status_code=204)


_ONE = [path_id("collection_id")]
ENDPOINTS = [
    Endpoint("POST", "/v1/collections", post_collection, "createCollection",
             "Create a collection",
             {201: Reply("Created", Collection, links={"GetCollection": {
                 "operationId": "getCollection",
                 "parameters": {"collection_id": "$response.body#/id"}}})},
             body=CollectionCreate,
             errors={409: "collection_name_taken: you already have a collection of this name"}),
    Endpoint("GET", "/v1/collections", get_collections, "listCollections",
             "The caller's collections", {200: Reply("A page, newest first", CollectionPage)},
             description=QUERY_RULES, parameters=PAGE_PARAMETERS, errors={422: BAD_QUERY}),
    Endpoint("GET", "/v1/collections/{collection_id}", get_collection, "getCollection",
             "One collection", {200: Reply("The collection", Collection)}, parameters=_ONE,
             errors={404: "No such collection"}),
    Endpoint("PATCH", "/v1/collections/{collection_id}", patch_collection, "updateCollection",
             "Rename or describe a collection", {200: Reply("As changed", Collection)},
             body=CollectionUpdate, parameters=_ONE,
             errors={404: "No such collection",
                     409: "collection_name_taken: you already have a collection of this name"}),
    Endpoint("DELETE", "/v1/collections/{collection_id}", delete_collection,
             "deleteCollection", "Delete a collection (its items stay in the library)",
             {204: Reply("Deleted", content={})}, parameters=_ONE,
             errors={404: "No such collection"}),
]
