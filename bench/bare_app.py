"""The intake baselines, served by uvicorn as ``genq api`` serves genq (``api/server.py``): same
loop, same HTTP parser (httptools), lifespan on, no access log, no server header; genq's own
connection limits (``api/protocol.py``) are left out, so their cost counts against genq.

- without ``--database-url``: one JSON handler, the cost of Starlette + uvicorn alone;
- with it: the intake floor (see ``bench/floor.py``), one autocommit INSERT per request;
- ``GET /v1/events``: a bare sse-starlette stream that only sends its heartbeat (the baseline
  of an open ``genq api`` event stream).

``python -m bench.bare_app --host H --port P [--database-url URL --pool-size N]``
"""

from __future__ import annotations

import argparse
import asyncio
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
    args = parser.parse_args()
    served = app if args.database_url is None else floor_app(
        args.database_url, args.pool_size, args.group_commit
    )
    config = uvicorn.Config(served, host=args.host, port=args.port, lifespan="on",
                            log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
