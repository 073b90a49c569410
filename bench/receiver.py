"""A webhook receiver for the benchmarks: uvicorn answering 204 to every POST, as cheap as a
receiver can be, so the figures are the sender's.

``python -m bench.receiver --port P``
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    """Read the delivery and accept it."""
    await request.body()
    return Response(status_code=204)


app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, lifespan="off",
                            log_config=None, access_log=False, server_header=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
