"""The aiohttp application: routes, middlewares, and the resources' lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.categorizer import Categorizer
from service import handlers, logs, memory, tracing
from service.errors import ApiError, from_http_exception, problem_response
from service.metrics import GAUGE_REFRESH_SECONDS, Metrics
from service.model_card import model_card
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
    app.router.add_post("/v1/categorize", handlers.categorize, expect_handler=handlers.expect_later)
    app.router.add_get("/v1/model", handlers.model, allow_head=False)
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/readyz", handlers.readyz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    app.router.add_get("/openapi.json", handlers.openapi, allow_head=False)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    model = Categorizer.load(settings.model_path)  # raises ModelError: start-up fails
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    # Several workers share the metrics through files (the supervisor set the directory).
    metrics = Metrics(model.labels, multiprocess=settings.workers > 1)
    scheduler = _scheduler(settings, model, executor, metrics)
    app[STATE] = State(
        settings=settings,
        model=model,
        executor=executor,
        decoder=RequestDecoder(settings),
        metrics=metrics,
        openapi=msgspec.json.encode(openapi_document(settings)),
        model_card=msgspec.json.encode(model_card(model)),
        scheduler=scheduler,
        discard_slots=Slots(handlers.DISCARD_SLOTS),
    )
    log.info("model loaded", extra={"model_path": settings.model_path, "labels": len(model.labels)})
    refresh = asyncio.ensure_future(_refresh_gauges(metrics)) if metrics.multiprocess else None
    yield
    if refresh is not None:
        refresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresh
    scheduler.close()  # the server has stopped: anything still queued is answered 503
    executor.shutdown(wait=True)  # after the server has finished in-flight requests
    metrics.close()
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
        "Estimated model seconds of the pending requests (what Retry-After is derived from); "
        "with several workers, the busiest worker's.",
        lambda: scheduler.pending_seconds,
        mode="livemax",  # each worker refuses work past its own MAX_QUEUE_SECONDS
    )
    return scheduler


async def _refresh_gauges(metrics: Metrics) -> None:
    """Multiprocess mode: keeps this worker's gauges in its file at most
    GAUGE_REFRESH_SECONDS old, for the scrapes the other workers answer."""
    while True:
        await asyncio.sleep(GAUGE_REFRESH_SECONDS)
        metrics.refresh_gauges()


def _unmatched_route(request: web.Request) -> str:
    """The label of a request no route took: its path if the app has it (a wrong method,
    405), else UNMATCHED_ROUTE (a 404)."""
    known = any(resource.canonical == request.path for resource in request.app.router.resources())
    return request.path if known else UNMATCHED_ROUTE


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's ids (X-Request-ID, traceparent) in its log lines and its answer,
    the model version and Server-Timing on every answer, request metrics, and
    `Connection: close` while draining or when a body did not arrive whole."""
    start = time.perf_counter()
    headers = request.headers
    request_id = tracing.request_id(headers.get(tracing.REQUEST_ID_HEADER))
    trace_id = tracing.trace_id(headers.get(tracing.TRACEPARENT_HEADER))
    # On the request for the problem body and the access log; in the context for the
    # lines logged while the handler runs.
    request[tracing.REQUEST_ID_KEY] = request_id
    request[tracing.TRACE_ID_KEY] = trace_id
    context = logs.REQUEST.set((request_id, trace_id))
    try:
        response = await handler(request)
    finally:
        logs.REQUEST.reset(context)
    seconds = time.perf_counter() - start
    state = request.app[STATE]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else _unmatched_route(request)
    state.metrics.observe_request(route, response.status, seconds)
    state.metrics.publish(idle=state.scheduler.pending_requests == 0)
    answer = response.headers
    answer[tracing.REQUEST_ID_HEADER] = request_id
    answer[tracing.MODEL_VERSION_HEADER] = state.model.version
    model_seconds = request.get(tracing.MODEL_SECONDS_KEY)
    answer[tracing.SERVER_TIMING_HEADER] = tracing.server_timing(seconds, model_seconds)
    if state.draining or request.get(handlers.CLOSE_KEY, False):
        # Draining: clients then reconnect for their next request instead of reusing a
        # keep-alive connection that shutdown would close under them. CLOSE_KEY: the
        # request's body was never sent, or not all of it in time, or not as a valid
        # chunked body (see handlers): the connection's next bytes are no request.
        response.force_close()
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's, becomes a problem+json response."""
    request_id = request.get(tracing.REQUEST_ID_KEY)  # set by observe, the outer middleware
    try:
        return await handler(request)
    except ApiError as error:
        return problem_response(error, request.path, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are not errors
            raise
        return problem_response(from_http_exception(exc), request.path, request_id)
    except Exception:
        # A bug, not the client's fault: log it in full, tell the client nothing more.
        log.exception("unhandled error on %s %s", request.method, request.path)
        bug = ApiError(500, "Internal Server Error", "unexpected server error; it has been logged")
        return problem_response(bug, request.path, request_id)
