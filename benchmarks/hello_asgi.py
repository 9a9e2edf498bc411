"""A minimal raw ASGI hello-world served by hypercorn's trio worker: the server's own ceiling.

    python benchmarks/hello_asgi.py [--port N] [--cpus 0]

Uses `hypercorn.trio.serve` with the same hypercorn settings Hestia's gateway uses (no access
log, no Server or Date header, 30 s keep-alive), so that the only difference from the gateway is
the work the gateway does per request. Prints `listening <port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

BODY = b"Hello, world!\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY, "more_body": False})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.keep_alive_timeout = 30
    config.include_server_header = False
    config.include_date_header = False
    config.graceful_timeout = 1
    return config


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, hypercorn_config(f"127.0.0.1:{port}")))
        bound = urls[0].rsplit(":", 1)[1]
        print(f"listening {bound}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpus", help="pin to these CPUs, e.g. 0")
    args = parser.parse_args()
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        trio.run(main, args.port)
    except KeyboardInterrupt:
        sys.exit(130)
