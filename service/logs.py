"""Logging as JSON lines on stderr, for the supervisor and the workers alike.

Light on purpose (no aiohttp): the supervisor imports it. The access log is in
service/access_log.py."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Dict, Optional, Tuple

import msgspec

from service.settings import Settings

log = logging.getLogger("categorizer")
# LogRecord attributes that are not `extra=` fields.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_ENCODER = msgspec.json.Encoder()
# The request being handled, (request id, W3C trace id or None), set by the app's
# middleware: every line logged while it is handled carries both. The access log line,
# written after the handler, takes them from the request itself (service/access_log.py).
REQUEST: ContextVar[Optional[Tuple[str, Optional[str]]]] = ContextVar("request", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: Dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = REQUEST.get()
        if request is not None:
            line["request_id"] = request[0]
            if request[1] is not None:
                line["trace_id"] = request[1]
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


def log_serving(settings: Settings, workers: int, model_version: str) -> None:
    """The one line that says the service is up: where, how many workers, which model
    (the version the workers computed from the file they loaded)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    if ":" in host:  # IPv6
        host = f"[{host}]"
    log.info(
        "serving",
        extra={
            "url": f"http://{host}:{settings.port}",
            "workers": workers,
            "model_version": model_version,
            "model_path": settings.model_path,
        },
    )
