"""The aiohttp application: routes, middlewares, and the resources' lifetime."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.categorizer import Categorizer
from service import handlers, memory
from service.errors import ApiError, from_http_exception, problem_response
from service.metrics import Metrics
from service.scheduler import Scheduler
from service.schema import RequestDecoder, openapi_document
from service.settings import Settings
from service.slots import Slots
from service.state import STATE, State

log = logging.getLogger("categorizer")
SETTINGS = web.AppKey("settings", Settings)
UNMATCHED_ROUTE = "unmatched"  # metrics label of 404s, so random paths add no series


def create_app(settings: Settings) -> web.Application:
    """The app; the model loads at startup (cleanup_ctx), not here."""
    # client_max_size: aiohttp's own cap for request.read(); the categorize handler reads
    # its body chunk by chunk and enforces the same limit itself.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[observe, problems])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/categorize", handlers.categorize)
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/readyz", handlers.readyz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    app.router.add_get("/openapi.json", handlers.openapi, allow_head=False)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    model = Categorizer.load(settings.model_path)  # raises ModelError: start-up fails
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    metrics = Metrics(model.labels)
    scheduler = _scheduler(settings, model, executor, metrics)
    app[STATE] = State(
        settings=settings,
        model=model,
        executor=executor,
        decoder=RequestDecoder(settings),
        metrics=metrics,
        openapi=msgspec.json.encode(openapi_document(settings)),
        scheduler=scheduler,
        discard_slots=Slots(handlers.DISCARD_SLOTS),
    )
    log.info("model loaded", extra={"model_path": settings.model_path, "labels": len(model.labels)})
    yield
    scheduler.close()  # the server has stopped: anything still queued is answered 503
    executor.shutdown(wait=True)  # after the server has finished in-flight requests
    # How much sharing the load allowed: requests per model call.
    log.info("batching", extra={"requests": scheduler.requests, "model_calls": scheduler.calls})


def _scheduler(
    settings: Settings, model: Categorizer, executor: ThreadPoolExecutor, metrics: Metrics
) -> Scheduler:
    scheduler = Scheduler(
        model,
        executor,
        metrics,
        max_pending_bytes=settings.max_pending_bytes,
        max_queue_seconds=settings.max_queue_seconds,
        batch_max_products=settings.batch_max_products,
        trim=memory.trim,
    )
    metrics.gauge(
        "categorizer_pending_requests",
        "Categorize requests admitted and not yet answered (reading, queued or running).",
        lambda: scheduler.pending_requests,
    )
    metrics.gauge(
        "categorizer_pending_bytes", "Body bytes of the pending requests.", lambda: scheduler.pending_bytes
    )
    metrics.gauge(
        "categorizer_queued_requests",
        "Requests decoded and waiting for a model call.",
        lambda: scheduler.queued_requests,
    )
    metrics.gauge(
        "categorizer_pending_work_seconds",
        "Estimated model seconds of the pending requests (what Retry-After is derived from).",
        lambda: scheduler.pending_seconds,
    )
    return scheduler


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request metrics, and `Connection: close` while draining."""
    start = time.perf_counter()
    response = await handler(request)
    state = request.app[STATE]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED_ROUTE
    state.metrics.observe_request(route, response.status, time.perf_counter() - start)
    if state.draining:
        # Clients then reconnect for their next request instead of reusing a
        # keep-alive connection that shutdown would close under them.
        response.force_close()
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's, becomes a problem+json response."""
    try:
        return await handler(request)
    except ApiError as error:
        return problem_response(error, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are not errors
            raise
        return problem_response(from_http_exception(exc), request.path)
    except Exception:
        # A bug, not the client's fault: log it in full, tell the client nothing more.
        log.exception("unhandled error on %s %s", request.method, request.path)
        bug = ApiError(500, "Internal Server Error", "unexpected server error; it has been logged")
        return problem_response(bug, request.path)
