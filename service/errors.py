"""The one error type of the API and its RFC 9457 problem+json rendering."""

from __future__ import annotations

import math
from typing import Dict, Optional

import msgspec
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
# `type` is "about:blank" (RFC 9457 §4.2.1): the status and title say it all.
PROBLEM_TYPE = "about:blank"
_ENCODER = msgspec.json.Encoder()


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, the body of every error response. `request_id` (an
    extension member) is the X-Request-ID of the request, so that a client can quote it
    and an operator find the log lines about it."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    field: Optional[str] = None
    request_id: Optional[str] = None


# Not an IANA status: nginx's convention for "the client went away first".
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    """An error a client caused or can see, with the HTTP status it maps to.

    `field` is the offending request field in `products[3].title` form ("body" when
    the body as a whole is wrong), None when no field is involved.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        field: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = headers or {}  # Allow of a 405, Retry-After of a 503

    @classmethod
    def invalid(cls, field: str, message: str) -> ApiError:
        return cls(400, "Invalid request", f"{field}: {message}", field)

    @classmethod
    def client_gone(cls) -> ApiError:
        # nginx's 499: the client closed the connection before sending its whole
        # body. Nobody reads the answer; the status keeps it out of 5xx alerts.
        return cls(
            CLIENT_CLOSED_REQUEST, "Client Closed Request", "body: the connection closed mid-body", "body"
        )

    @classmethod
    def client_left(cls) -> ApiError:
        # The client closed the connection while its request waited for the model:
        # the request is dropped before its model call, and nobody reads this.
        detail = "the connection closed while the request waited"
        return cls(CLIENT_CLOSED_REQUEST, "Client Closed Request", detail)

    @classmethod
    def overloaded(cls, detail: str, retry_after_seconds: float) -> ApiError:
        # Retry-After takes whole seconds; at least 1, so that a client never retries at once.
        retry_after = str(max(1, math.ceil(retry_after_seconds)))
        detail = f"{detail}; retry after {retry_after} s"
        return cls(503, "Service Unavailable", detail, None, {"Retry-After": retry_after})

    @classmethod
    def body_timeout(cls, seconds: float) -> ApiError:
        detail = f"body: not received within {seconds:g} s"
        return cls(408, "Request Timeout", detail, "body")

    @classmethod
    def unsupported_encoding(cls, encoding: str) -> ApiError:
        detail = f"body: Content-Encoding {encoding!r} is not accepted; send the JSON uncompressed"
        return cls(415, "Unsupported Media Type", detail, "body")

    @classmethod
    def expectation_failed(cls, expect: str) -> ApiError:
        detail = f"Expect: {expect!r} is not supported; the one expectation accepted is '100-continue'"
        return cls(417, "Expectation Failed", detail)

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        return cls(413, "Content Too Large", f"body: larger than the limit of {limit} bytes", "body")


def problem_response(error: ApiError, instance: str, request_id: Optional[str] = None) -> web.Response:
    body = Problem(PROBLEM_TYPE, error.title, error.status, error.detail, instance, error.field, request_id)
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE, **error.headers}
    return web.Response(status=error.status, body=_ENCODER.encode(body), headers=headers)


def from_http_exception(exc: web.HTTPException) -> ApiError:
    """The ApiError for aiohttp's own 404/405/413..., keeping their status."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"method {exc.method} is not allowed here; use {allowed}"
        return ApiError(405, exc.reason, detail, None, {"Allow": allowed})
    if isinstance(exc, web.HTTPNotFound):
        return ApiError(404, exc.reason, "no such path; see /openapi.json")
    return ApiError(exc.status, exc.reason, exc.reason)
