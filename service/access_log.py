"""The optional sampled access log (ACCESS_LOG), as JSON lines through service.logs.

aiohttp writes it once the response is sent, after the middleware that sets the log
context (service.logs.REQUEST) has returned: the request id and trace id come from the
request itself, where that middleware also put them (service.app)."""

from __future__ import annotations

import logging
import random
from typing import Type

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.tracing import REQUEST_ID_KEY, TRACE_ID_KEY

ACCESS_LOGGER = "categorizer.access"


class _SampledAccessLogger(AbstractAccessLogger):
    sample_rate = 1.0

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        extra = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time_taken * 1000, 3),
            "bytes": response.body_length,
            "remote": request.remote,
            "request_id": request.get(REQUEST_ID_KEY),
        }
        trace_id = request.get(TRACE_ID_KEY)
        if trace_id is not None:
            extra["trace_id"] = trace_id
        self.logger.info("access", extra=extra)


def access_logger_class(sample_rate: float) -> Type[AbstractAccessLogger]:
    """aiohttp instantiates the class itself, so the rate travels as a class attribute."""
    return type("SampledAccessLogger", (_SampledAccessLogger,), {"sample_rate": sample_rate})


def access_logger() -> logging.Logger:
    return logging.getLogger(ACCESS_LOGGER)
