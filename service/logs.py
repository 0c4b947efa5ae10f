"""Logging as JSON lines on stderr, and an optional sampled access log."""

from __future__ import annotations

import logging
import random
import sys
from typing import Any, Dict, Type

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

ACCESS_LOGGER = "categorizer.access"
# LogRecord attributes that are not `extra=` fields.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_ENCODER = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: Dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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
