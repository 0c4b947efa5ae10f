"""One worker: serve the app on the shared port until SIGTERM, then drain and stop.

Shutdown sequence (the same in every worker):
1. SIGTERM/SIGINT: /readyz turns 503 at once, and queued requests that would not
   start within DRAIN_SECONDS are answered 503 at once (after a burst, that queue holds
   work for clients that will have given up by the time it is done; a light load's
   few queued requests still run). New requests are still admitted and served, new
   connections still accepted (closing a SO_REUSEPORT listener would reset the
   connections queued in its accept backlog), responses carry `Connection: close`.
2. After DRAIN_SECONDS: new requests, and queued ones that would not start within
   GRACE_SECONDS, are answered 503; stop accepting, let the rest finish within
   GRACE_SECONDS, release the model, return (exit code 0).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from runtime.categorizer import ModelError
from service.access_log import access_logger, access_logger_class
from service.app import create_app
from service.logs import log_serving
from service.settings import Settings
from service.signals import STOP_SIGNALS, accept_stop_signals
from service.state import STATE

log = logging.getLogger("categorizer")
# Accept queue length per worker; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 2048


class StartupError(Exception):
    """The worker could not start (model, port); the message is one line."""


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad chunk size, a negative
    Content-Length, a header line over 8 KiB) as an ERROR with a traceback, as it logs a
    bug. The fault is the client's, and any client could fill the error log with them:
    such a line becomes one WARNING, with aiohttp's reason and no traceback. aiohttp
    still answers 400 and closes the connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg, record.args = "malformed request refused", ()
            record.exc_info, record.exc_text = None, None
            record.reason = " ".join(str(error.message).split())[:200]
            # Its logger let the ERROR through; at LOG_LEVEL=ERROR the WARNING must not pass.
            return logging.getLogger(record.name).isEnabledFor(logging.WARNING)
        return True


def run_worker(settings: Settings, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serves until SIGTERM/SIGINT and a graceful stop; raises StartupError."""
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    try:
        import uvloop  # optional: plain asyncio works, only slower
    except ImportError:
        asyncio.run(serve(settings, on_ready))
    else:
        uvloop.run(serve(settings, on_ready))


async def serve(settings: Settings, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serves until stopped; `on_ready(model_version)` once listening (a worker's report)."""
    app = create_app(settings)
    sampled = settings.access_log_sample > 0
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours below: drain first, then stop
        access_log=access_logger() if sampled else None,  # None: no per-request logging cost
        access_log_class=access_logger_class(settings.access_log_sample),
        shutdown_timeout=settings.grace_seconds,
        # Bodies stay as sent: the handler refuses compressed ones (415), which would
        # otherwise be inflated by aiohttp before any budget could see their size.
        auto_decompress=False,
    )
    stop = _stop_event()
    try:
        await runner.setup()  # runs the cleanup_ctx start-up: loads the model
    except ModelError as exc:
        raise StartupError(str(exc)) from None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
        version = app[STATE].model.version
        if on_ready is None:  # serving alone: this is the service's start-up line
            log_serving(settings, 1, version)
        else:  # a worker: the supervisor says it once all are up
            log.info("worker serving", extra={"host": settings.host, "port": settings.port})
            on_ready(version)
        await stop.wait()
        state = app[STATE]
        state.draining = True
        refused = state.scheduler.refuse_queued(keep_seconds=settings.drain_seconds)
        log.info("draining", extra={"seconds": settings.drain_seconds, "refused_queued": refused})
        await asyncio.sleep(settings.drain_seconds)
        refused = state.scheduler.close(keep_seconds=settings.grace_seconds)
        log.info("stopping", extra={"grace_seconds": settings.grace_seconds, "refused_queued": refused})
    finally:
        await runner.cleanup()  # stops accepting, waits for in-flight requests


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        # A second signal changes nothing: the drain is already under way.
        loop.add_signal_handler(signum, stop.set)
    accept_stop_signals()  # one sent while starting was held back until now
    return stop
