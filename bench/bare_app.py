"""The intake baseline: a bare Starlette app with one JSON handler, served by uvicorn exactly as
``genq api`` serves genq (``api/server.py``): same loop, same HTTP implementation, lifespan on,
no access log, no server header.

``python -m bench.bare_app --host H --port P``
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def create(request: Request) -> Response:
    """Accept anything: the cost of Starlette + uvicorn alone."""
    return JSONResponse({"id": "bare", "status": "queued"}, status_code=202)


app = Starlette(routes=[Route("/v1/jobs", create, methods=["POST"])])


def main() -> None:
    """Serve the bare app until interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on",
                            log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
