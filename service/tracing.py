"""What ties an answer to its log lines: the request id (X-Request-ID), the W3C trace id
(traceparent) and the Server-Timing header. Plain functions of header values; no aiohttp."""

from __future__ import annotations

import os
import re
from typing import Optional

REQUEST_ID_HEADER = "X-Request-ID"
TRACEPARENT_HEADER = "traceparent"
SERVER_TIMING_HEADER = "Server-Timing"
MODEL_VERSION_HEADER = "X-Model-Version"
# Where the app's middleware keeps a request's ids and its model time on the request
# (aiohttp's request storage takes string keys), for the problem bodies, the access log
# and Server-Timing.
REQUEST_ID_KEY = "request_id"
TRACE_ID_KEY = "trace_id"
MODEL_SECONDS_KEY = "model_seconds"
# Longest client request id kept; a longer one, or one with a character outside
# printable ASCII, is replaced (it goes into log lines and problem bodies as it is).
MAX_REQUEST_ID_CHARS = 128
# version-traceid-parentid-flags (W3C Trace Context, level 1), lower-case hex. A version
# other than 00 may append fields after the flags; version ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def request_id(sent: Optional[str]) -> str:
    """The client's X-Request-ID when it is 1 to MAX_REQUEST_ID_CHARS printable ASCII
    characters, else a new one."""
    if sent and len(sent) <= MAX_REQUEST_ID_CHARS and sent.isascii() and sent.isprintable():
        return sent
    return new_request_id()


def new_request_id() -> str:
    """32 random hex digits (128 bits, a trace id's format); a fifth of uuid4's cost."""
    return os.urandom(16).hex()


def trace_id(traceparent: Optional[str]) -> Optional[str]:
    """The trace id of a valid W3C traceparent header, else None (the header is then
    ignored, as the Trace Context spec asks of a receiver)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    return trace


def server_timing(total_seconds: float, model_seconds: Optional[float] = None) -> str:
    """`model;dur=MS, total;dur=MS` (milliseconds, the header's unit): the model call
    that computed the answer, when there was one, and the time in the service."""
    total = f"total;dur={total_seconds * 1000:.3f}"
    if model_seconds is None:
        return total
    return f"model;dur={model_seconds * 1000:.3f}, {total}"
