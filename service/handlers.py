"""HTTP handlers: parse, call the model, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Dict, List, Sequence, Union

import msgspec
import numpy as np
from aiohttp import HttpVersion11, hdrs, web

from service.errors import ApiError
from service.scheduler import Prediction, Scheduler, Ticket
from service.schema import INCLUDE, INCLUDE_PROBABILITIES, CategorizeResponse
from service.state import STATE, State
from service.tracing import MODEL_SECONDS_KEY

# Refused bodies are read and dropped (_discard_body) this many at a time per worker;
# a refused request waits at most this long for its turn.
DISCARD_SLOTS = 4
DISCARD_WAIT_SECONDS = 5.0

# Refusals made before the body was read (too large, compressed, over the budgets): the
# rest of the body is read and dropped first, so that the client sees the answer.
_REFUSED_BEFORE_THE_BODY = frozenset({413, 415, 503})

_ENCODER = msgspec.json.Encoder()
_JSON_HEADERS = {"Content-Type": "application/json"}

# The one expectation HTTP defines (RFC 9110, section 10.1.1).
_CONTINUE = "100-continue"
# On a request: 100 Continue was sent, the client is sending its body.
_CONTINUED_KEY = "continued"
# On a request: its answer must close the connection (service.app's observe does it).
CLOSE_KEY = "close"


async def expect_later(request: web.Request) -> None:
    """The Expect handler of /v1/categorize: answers nothing here.

    aiohttp's default sends 100 Continue before any middleware or handler runs, which
    invites the client to upload a body that the handler may then refuse unread (413,
    415, 503). The handler sends 100 Continue itself once the request is admitted, and
    answers an unknown expectation with a problem (417)."""


async def categorize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        with_probabilities = _wants_probabilities(request)
        prediction = await _categorize(request, state)
    except ApiError as error:
        if _body_withheld(request):
            # The client waits for 100 Continue before it sends the body: it gets the
            # answer now, and the connection closes, since the body never comes.
            request[CLOSE_KEY] = True
        elif error.status in _REFUSED_BEFORE_THE_BODY or error.field == INCLUDE:
            await _discard_body(request, state)
        raise
    categories, probabilities, seconds = prediction
    state.metrics.observe_predictions(categories, probabilities)
    if seconds:
        request[MODEL_SECONDS_KEY] = seconds  # for Server-Timing (service.app)
    answer = CategorizeResponse(
        categories, _per_label(state.model.labels, probabilities) if with_probabilities else None
    )
    return web.Response(body=_ENCODER.encode(answer), headers=_JSON_HEADERS)


def _wants_probabilities(request: web.Request) -> bool:
    """?include=probabilities (once or repeated); any other value is a 400 naming `include`."""
    if not request.query_string:  # the usual request: no query to parse
        return False
    values = request.query.getall(INCLUDE, [])
    for value in values:
        if value != INCLUDE_PROBABILITIES:
            detail = f"unknown value {value!r}; the one accepted is {INCLUDE_PROBABILITIES!r}"
            raise ApiError.invalid(INCLUDE, detail)
    return bool(values)


def _per_label(labels: Sequence[str], probabilities: np.ndarray) -> List[Dict[str, float]]:
    # The graph's float32 values, widened exactly to float64: a client that reads them as
    # float32 gets the model's output bit for bit.
    return [dict(zip(labels, row)) for row in probabilities.tolist()]


_NO_PROBABILITIES = np.zeros((0, 0), dtype=np.float32)


async def _categorize(request: web.Request, state: State) -> Prediction:
    expect = request.headers.get(hdrs.EXPECT)
    if expect and expect.strip().lower() != _CONTINUE:
        raise ApiError.expectation_failed(expect)
    limit = state.settings.max_body_bytes
    # Content-Length says it up front: refuse without reading.
    if request.content_length is not None and request.content_length > limit:
        raise ApiError.too_large(limit)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        # A compressed body would inflate past every budget, which count the bytes sent.
        raise ApiError.unsupported_encoding(encoding)
    scheduler = state.scheduler
    ticket = scheduler.admit(request.content_length)  # 503 before the body costs anything
    try:
        if expect:
            await _send_continue(request)
        body = await _read_body(request, scheduler, ticket, limit, state.settings.body_timeout_seconds)
        batch = state.decoder.decode(body)
        del body  # the decoded strings are what waits for the model, not the bytes too
        if not batch.titles:  # nothing to run
            return Prediction([], _NO_PROBABILITIES, 0.0)
        return await scheduler.categorize(
            ticket, batch.titles, batch.tags, batch.fields, batch.chars, lambda: request.transport is None
        )
    finally:
        scheduler.release(ticket)


async def _send_continue(request: web.Request) -> None:
    """100 Continue to a client that waits for it before sending the body (what aiohttp's
    default Expect handler would have sent before the request was admitted)."""
    if request.version >= HttpVersion11 and not request.content.is_eof():
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client left
            raise ApiError.client_gone() from None
        request.writer.output_size = 0  # the answer's own size starts after it
        request[_CONTINUED_KEY] = True


def _body_withheld(request: web.Request) -> bool:
    """Whether the client still waits for 100 Continue before it sends its body: an
    HTTP/1.1 request with an expectation, no 100 Continue sent, and no byte of the body
    received (an HTTP/1.0 client never waits, and one that gave up waiting is uploading:
    its body is read and dropped as any refused body is)."""
    return (
        bool(request.headers.get(hdrs.EXPECT))
        and request.version >= HttpVersion11
        and not request.get(_CONTINUED_KEY, False)
        and request.content.total_bytes == 0
        and not request.content.is_eof()
    )


async def _read_body(
    request: web.Request, scheduler: Scheduler, ticket: Ticket, limit: int, timeout: float
) -> Union[bytes, bytearray]:
    if request.content.is_eof():
        # The whole body came with the headers, as small requests' do: take it as it is,
        # with no timer and no task for a time-out.
        body = request.content.read_nowait()
        _count(scheduler, ticket, len(body), limit)
        return body
    try:
        return await asyncio.wait_for(_read_chunks(request, scheduler, ticket, limit), timeout)
    except asyncio.TimeoutError:
        # The rest of the body may still come: on this connection it would be read as
        # the next request (aiohttp's lingering close reads it as this body's tail).
        request[CLOSE_KEY] = True
        raise ApiError.body_timeout(timeout) from None
    except ConnectionResetError:  # aiohttp's own disconnect errors subclass it
        raise ApiError.client_gone() from None
    except web.RequestPayloadError as exc:  # e.g. a malformed chunked encoding
        request[CLOSE_KEY] = True  # where this body ends and the next request starts is lost
        raise ApiError.invalid("body", f"malformed body: {exc}") from None


async def _discard_body(request: web.Request, state: State) -> None:
    """Reads and drops the body of a refused request before answering it.

    A server that answers and closes while the client is still uploading makes the
    client see a reset, not the answer. aiohttp's lingering close would read the rest
    after the answer, but for every refused connection at once: under a burst of large
    bodies that much reading starves the event loop, and health checks with it. Here
    at most DISCARD_SLOTS bodies are read at a time; the other clients wait, blocked
    on their upload, which costs this worker nothing. Past DISCARD_WAIT_SECONDS, or the
    body time-out, aiohttp's lingering close takes over."""
    if request.content.is_eof():  # all of it has arrived: nothing to wait for
        return
    limit, timeout = state.settings.max_body_bytes, state.settings.body_timeout_seconds
    if not await state.discard_slots.acquire(DISCARD_WAIT_SECONDS):
        return  # a crowd of refused uploads: aiohttp's lingering close reads this one
    try:
        with contextlib.suppress(asyncio.TimeoutError, ConnectionResetError, web.RequestPayloadError):
            await asyncio.wait_for(_drain(request, limit), timeout)
    finally:
        state.discard_slots.release()


async def _drain(request: web.Request, limit: int) -> None:
    seen = 0
    while seen <= limit:
        chunk = await request.content.readany()
        if not chunk:
            return
        seen += len(chunk)


async def _read_chunks(request: web.Request, scheduler: Scheduler, ticket: Ticket, limit: int) -> bytearray:
    # Not request.read(): it keeps a second copy of the body on the request until the
    # response is sent. A chunked body is counted against the budgets as it arrives.
    body = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return body
        body += chunk
        _count(scheduler, ticket, len(body), limit)


def _count(scheduler: Scheduler, ticket: Ticket, size: int, limit: int) -> None:
    if size > limit:  # a chunked body, or one longer than its Content-Length said
        raise ApiError.too_large(limit)
    scheduler.grow(ticket, size)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    if state.draining:
        return web.Response(status=503, text="draining")
    return web.Response(text="ready")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": state.metrics.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].openapi, headers=_JSON_HEADERS)


async def model(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].model_card, headers=_JSON_HEADERS)
