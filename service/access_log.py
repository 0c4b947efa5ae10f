"""The optional sampled access log (ACCESS_LOG), as JSON lines through service.logs."""

from __future__ import annotations

import logging
import random
from typing import Type

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

ACCESS_LOGGER = "categorizer.access"


class _SampledAccessLogger(AbstractAccessLogger):
    sample_rate = 1.0

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        self.logger.info(
            "access",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time_taken * 1000, 3),
                "bytes": response.body_length,
                "remote": request.remote,
            },
        )


def access_logger_class(sample_rate: float) -> Type[AbstractAccessLogger]:
    """aiohttp instantiates the class itself, so the rate travels as a class attribute."""
    return type("SampledAccessLogger", (_SampledAccessLogger,), {"sample_rate": sample_rate})


def access_logger() -> logging.Logger:
    return logging.getLogger(ACCESS_LOGGER)
