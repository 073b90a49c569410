"""The intake baselines, served by uvicorn as ``genq api`` serves genq (``api/server.py``): same
loop, same HTTP parser (httptools), lifespan on, no access log, no server header; genq's own
connection limits (``api/protocol.py``) are left out, so their cost counts against genq.

- without ``--database-url``: one JSON handler, the cost of Starlette + uvicorn alone;
- with it: the intake floor (see ``bench/floor.py``), one autocommit INSERT per request;
- with ``--redis-url`` too: the intake floor with genq's rows (:func:`rows_floor_app`);
- ``GET /v1/events``: a bare sse-starlette stream that only sends its heartbeat (the baseline
  of an open ``genq api`` event stream).

``python -m bench.bare_app --host H --port P [--database-url URL --pool-size N [--group-commit]
[--redis-url URL --queue Q --model M]]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench import floor
from shared.batch import Batcher
from shared.catalog import ModelRules, list_models
from shared.db import connect
from shared.queue import create_arq_pool, enqueue_generations
from shared.users import hash_api_key


async def create(request: Request) -> Response:
    """Accept anything: the cost of Starlette + uvicorn alone."""
    return JSONResponse({"id": "bare", "status": "queued"}, status_code=202)


async def events(request: Request) -> Response:
    """An event stream that sends nothing but sse-starlette's heartbeat, until the client
    leaves."""

    async def nothing() -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    return EventSourceResponse(nothing(), ping=15)


def floor_app(database_url: str, pool_size: int, group_commit: bool = False) -> Starlette:
    """The intake floor: one INSERT of the request body per request, nothing else (with
    ``group_commit``, concurrent requests share one multi-row INSERT)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.pool = await floor.create_pool(database_url, pool_size)
        await app.state.pool.execute(floor.CREATE_TABLE)
        app.state.insert = floor.group_commit(app.state.pool, floor.INSERT_ROWS)
        try:
            yield
        finally:
            await app.state.pool.close()

    async def insert(request: Request) -> Response:
        job_id = uuid.uuid4()
        body = (await request.body()).decode()
        if group_commit:
            await request.app.state.insert((job_id, body))
        else:
            await request.app.state.pool.execute(floor.INSERT_ROW, job_id, body)
        return JSONResponse({"id": str(job_id), "status": "queued"}, status_code=202)

    return Starlette(routes=[Route("/v1/jobs", insert, methods=["POST"])], lifespan=lifespan)


def rows_floor_app(database_url: str, pool_size: int, redis_url: str, queue: str,
                   model: str) -> Starlette:
    """The intake floor with genq's rows: per request, the caller's account from its API key
    (the keys read once at start-up), the body's params merged with the model's defaults and
    priced (once per distinct params), genq's rows for the job written with
    ``floor.PLAIN_SUBMIT`` and the job put on genq's arq queue as genq puts it, both
    group-committed (concurrent requests share one statement and one Redis round trip). Only
    ``model`` is served. No check beyond that: the floor trusts its client, so an account must
    not be in two requests at once (two batches could then lock accounts in opposite orders)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await floor.create_pool(database_url, pool_size)
        redis = await create_arq_pool(redis_url)
        conn = await connect(database_url)  # with genq's JSON codecs, for the catalog
        try:
            keys = await conn.fetch("SELECT key_hash, user_id FROM api_keys "
                                    "WHERE revoked_at IS NULL")
            (spec,) = [m for m in await list_models(conn) if m.key == model]
        finally:
            await conn.close()
        app.state.users = {bytes(k["key_hash"]): k["user_id"] for k in keys}
        app.state.rules, app.state.prices = ModelRules.from_model(spec), {}
        app.state.submit = floor.group_commit(pool, floor.PLAIN_SUBMIT, model, spec.provider,
                                              86400.0)

        async def enqueue(job_ids: list[uuid.UUID]) -> list[None]:
            await enqueue_generations(redis, queue, job_ids)
            return [None] * len(job_ids)

        app.state.enqueue = Batcher(enqueue, max_batch=64, max_flushes=2)
        try:
            yield
        finally:
            await redis.aclose()
            await pool.close()

    async def submit(request: Request) -> Response:
        state = request.app.state
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        user_id = state.users.get(hash_api_key(token))
        if user_id is None:
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        body = json.loads(await request.body())
        if body.get("model") != model:
            return JSONResponse({"error": {"code": "unknown_model"}}, status_code=422)
        sent = json.dumps(body.get("params", {}))
        priced = state.prices.get(sent)
        if priced is None:
            checked = state.rules.check(body.get("params", {}))
            if isinstance(checked, list):
                return JSONResponse({"error": {"code": "invalid_params"}}, status_code=422)
            priced = state.prices[sent] = (json.dumps(checked.params), checked.price_per_output)
        job_id = uuid.uuid4()
        await state.submit((job_id, user_id, uuid.uuid4(), body["prompt"], priced[0],
                            random.randrange(2**31), priced[1]))
        await state.enqueue(job_id)
        return JSONResponse({"id": str(job_id), "status": "queued"}, status_code=202)

    return Starlette(routes=[Route("/v1/jobs", submit, methods=["POST"])], lifespan=lifespan)


app = Starlette(routes=[Route("/v1/jobs", create, methods=["POST"]),
                       Route("/v1/events", events)])


def main() -> None:
    """Serve the bare app (or the floor) until interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--group-commit", action="store_true")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--queue", default="arq:queue")
    parser.add_argument("--model", default="local/sketch")
    args = parser.parse_args()
    served = app
    if args.database_url is not None and args.redis_url is not None:
        served = rows_floor_app(args.database_url, args.pool_size, args.redis_url, args.queue,
                                args.model)
    elif args.database_url is not None:
        served = floor_app(args.database_url, args.pool_size, args.group_commit)
    config = uvicorn.Config(served, host=args.host, port=args.port, lifespan="on",
                            log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
