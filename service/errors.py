"""The one error type of the API and its RFC 9457 problem+json rendering."""

from __future__ import annotations

from typing import Optional

import msgspec
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
# `type` is "about:blank" (RFC 9457 §4.2.1): the status and title say it all.
PROBLEM_TYPE = "about:blank"
_ENCODER = msgspec.json.Encoder()


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    field: Optional[str] = None


# Not an IANA status: nginx's convention for "the client went away first".
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    """An error a client caused or can see, with the HTTP status it maps to.

    `field` is the offending request field in `products[3].title` form ("body" when
    the body as a whole is wrong), None when no field is involved.
    """

    def __init__(
        self, status: int, title: str, detail: str, field: Optional[str] = None, allow: str = ""
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.allow = allow  # the Allow header of a 405

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
    def body_timeout(cls, seconds: float) -> ApiError:
        detail = f"body: not received within {seconds:g} s"
        return cls(408, "Request Timeout", detail, "body")

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        return cls(413, "Content Too Large", f"body: larger than the limit of {limit} bytes", "body")


def problem_response(error: ApiError, instance: str) -> web.Response:
    body = Problem(PROBLEM_TYPE, error.title, error.status, error.detail, instance, error.field)
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if error.allow:
        headers["Allow"] = error.allow
    return web.Response(status=error.status, body=_ENCODER.encode(body), headers=headers)


def from_http_exception(exc: web.HTTPException) -> ApiError:
    """The ApiError for aiohttp's own 404/405/413..., keeping their status."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ApiError(
            405, exc.reason, f"method {exc.method} is not allowed here; use {allowed}", None, allowed
        )
    if isinstance(exc, web.HTTPNotFound):
        return ApiError(404, exc.reason, "no such path; see /openapi.json")
    return ApiError(exc.status, exc.reason, exc.reason)
