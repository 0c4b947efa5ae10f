"""The raw HTTP ceiling: the service's server stack (aiohttp, uvloop, SO_REUSEPORT workers)
with no decoding, validation, metrics or model work. `POST /v1/categorize` reads the body
and answers a constant `{"categories":["Outros"]}`; `GET /healthz` answers ok.

`python -m bench.rawserver --workers N` (HOST and PORT from the environment).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from typing import List, Optional, Sequence

from aiohttp import web

_BODY = b'{"categories":["Outros"]}'
_HEADERS = {"Content-Type": "application/json"}


async def categorize(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_BODY, headers=_HEADERS)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve(host: str, port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/categorize", categorize)
    app.router.add_get("/healthz", healthz)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    if loop_factory is not None:
        import asyncio

        asyncio.set_event_loop(loop_factory())
    web.run_app(app, host=host, port=port, reuse_port=True, access_log=None, print=None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rawserver", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8081"))
    if args.workers <= 1:
        serve(host, port)
        return 0
    context = multiprocessing.get_context("spawn")
    workers: List[multiprocessing.process.BaseProcess] = [
        context.Process(target=serve, args=(host, port)) for _ in range(args.workers)
    ]
    for worker in workers:
        worker.start()

    def stop(*_: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
