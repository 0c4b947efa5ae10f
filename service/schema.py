"""Request/response schema: one msgspec pass decodes and validates a request body,
and the same types generate the OpenAPI document.

No `from __future__ import annotations` here: msgspec reads the Struct annotations at
runtime, and the limits inside them come from the settings (a closure), which string
annotations could not see.
"""

import codecs
import json
import operator
import re
from typing import Annotated, Any, Dict, List, NamedTuple, Optional, Type, Union

import msgspec
from msgspec import Meta

from runtime.categorizer import (
    INPUT_EXPRESS_DELIVERY,
    INPUT_MINIMUM_QUANTITY,
    INPUT_PRICE,
    INPUT_SELLER,
    INPUT_WEIGHT,
    LISTING_FIELDS,
)
from service.errors import ApiError, Problem
from service.model_card import ModelCard
from service.settings import Settings
from service.tracing import (
    MAX_REQUEST_ID_CHARS,
    MODEL_VERSION_HEADER,
    REQUEST_ID_HEADER,
    SERVER_TIMING_HEADER,
    TRACEPARENT_HEADER,
)

# A lone UTF-16 surrogate escape; msgspec refuses them (onnxruntime could not encode
# them anyway), this only finds which field held one for the error message.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Bytes of a body checked for UTF-8 at a time (see _is_utf8).
_UTF8_SLICE_BYTES = 64 * 1024
_ERROR_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_PRODUCT_FIELD = re.compile(r"^products\[\d+\]\.(?P<name>\w+)$")
_GOT = re.compile(r", got (?P<got>`[^`]+`)$")
# msgspec bounds integers within int64 only: a seller id past it must be sent as a string.
_INT64_MAX = 9_223_372_036_854_775_807
_INT64_MIN = -_INT64_MAX - 1
_LISTING_GETTERS = tuple((name, operator.attrgetter(name)) for name in LISTING_FIELDS)


class Batch(NamedTuple):
    """A validated request, as the model takes it: parallel lists, "" for no tags, and
    a column per listing field that some product sent, in runtime.categorizer's terms:
    the seller as a string ("" unknown), the numbers as numbers or None (unknown).
    A field no product sent has no column, so a request of titles builds none."""

    titles: List[str]
    tags: List[str]
    chars: int  # characters of all titles and tags: the cost of running the batch
    fields: Dict[str, List[Any]]


# The query parameter that adds to a categorize response, and the one value it takes.
INCLUDE = "include"
INCLUDE_PROBABILITIES = "probabilities"


class CategorizeResponse(msgspec.Struct, omit_defaults=True):
    categories: List[str]
    # Only with ?include=probabilities: left out otherwise, so that the default answer
    # stays exactly {"categories": [...]}.
    probabilities: Annotated[
        Optional[List[Dict[str, float]]],
        Meta(
            description=(
                "With ?include=probabilities only: per product, in request order, every "
                "label's probability (the model's float32 output, widened exactly)."
            )
        ),
    ] = None


def request_type(settings: Settings) -> Type[msgspec.Struct]:
    """The request Struct with the configured limits built in (so they show in OpenAPI)."""

    class Product(msgspec.Struct):
        """A product: its title, and whatever else of its listing the client has (null or
        missing: unknown). Fields other than these are accepted and ignored."""

        title: Annotated[
            str,
            Meta(min_length=1, max_length=settings.max_title_chars, description="Product title."),
        ]
        concatenated_tags: Annotated[
            Optional[Annotated[str, Meta(max_length=settings.max_tags_chars)]],
            Meta(description='Space-separated seller tags; null, missing, "" and white space all mean none.'),
        ] = None
        seller_id: Annotated[
            Optional[
                Union[
                    Annotated[str, Meta(max_length=settings.max_seller_id_chars)],
                    Annotated[int, Meta(ge=_seller_low(settings), le=_seller_high(settings))],
                ]
            ],
            Meta(
                description=(
                    "The seller's id: a string, or an integer (sent to the model as its decimal "
                    'digits: 9835835 and "9835835" are the same seller); null, missing and "" '
                    "mean unknown."
                )
            ),
        ] = None
        price: Annotated[
            Optional[Annotated[float, Meta(ge=0, le=settings.max_price)]],
            _number("Price in reais (BRL)", settings.max_price),
        ] = None
        weight: Annotated[
            Optional[Annotated[float, Meta(ge=0, le=settings.max_weight)]],
            _number("Weight in grams", settings.max_weight),
        ] = None
        minimum_quantity: Annotated[
            Optional[Annotated[float, Meta(ge=0, le=settings.max_minimum_quantity)]],
            _number("Minimum quantity per order, in units", settings.max_minimum_quantity),
        ] = None
        # 0.0 and 1.0 too: a client's table with a missing value makes the column float
        # (pandas writes 1.0), and the model reads a number either way.
        express_delivery: Annotated[
            Optional[Union[bool, Annotated[float, Meta(ge=0, le=1, multiple_of=1)]]],
            Meta(
                description=(
                    "Whether the listing offers express delivery: true or false, or 0 or 1 "
                    "(0.0 and 1.0 too); null or missing mean unknown."
                )
            ),
        ] = None

    class CategorizeRequest(msgspec.Struct):
        products: Annotated[List[Product], Meta(max_length=settings.max_products)]

    return CategorizeRequest


def _seller_low(settings: Settings) -> int:
    # At most MAX_SELLER_ID_CHARS characters with the sign, and within int64 (msgspec
    # bounds no wider integers).
    widest: int = 10 ** (settings.max_seller_id_chars - 1) - 1
    return max(_INT64_MIN, -widest)


def _seller_high(settings: Settings) -> int:
    widest: int = 10**settings.max_seller_id_chars - 1
    return min(_INT64_MAX, widest)


def _number(what: str, high: float) -> Meta:
    return Meta(description=f"{what}: a number from 0 to {_shown(high)}; null or missing mean unknown.")


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else repr(float(number))


def _allowed(settings: Settings) -> Dict[str, str]:
    """What each listing field takes, for the message of a value it refuses (msgspec's own
    says only the bound or the type that failed: `Expected `float` <= 1.0`)."""
    number = "expected a number from 0 to {}, or null"
    return {
        INPUT_SELLER: (
            f"expected a string of at most {settings.max_seller_id_chars} characters, an "
            f"integer from {_seller_low(settings)} to {_seller_high(settings)}, or null"
        ),
        INPUT_PRICE: number.format(_shown(settings.max_price)),
        INPUT_WEIGHT: number.format(_shown(settings.max_weight)),
        INPUT_MINIMUM_QUANTITY: number.format(_shown(settings.max_minimum_quantity)),
        INPUT_EXPRESS_DELIVERY: "expected true, false, 0, 1 (or 0.0, 1.0), or null",
    }


class RequestDecoder:
    """Turns a request body into a Batch, or raises ApiError(400) naming the field."""

    def __init__(self, settings: Settings) -> None:
        self._decoder = msgspec.json.Decoder(request_type(settings))
        self._allowed = _allowed(settings)

    def decode(self, body: Union[bytes, bytearray]) -> Batch:
        # msgspec checks the UTF-8 of the strings it keeps, not of fields it skips or of
        # keys: the whole body is checked here.
        if not _is_utf8(body):
            raise ApiError.invalid("body", "not valid UTF-8")
        try:
            request: Any = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _schema_error(str(exc), self._allowed) from None
        except msgspec.DecodeError as exc:
            raise _syntax_error(body, str(exc)) from None
        except RecursionError:  # msgspec raises it for deep nesting in ignored fields
            raise ApiError.invalid("body", "JSON nested too deeply") from None
        titles: List[str] = []
        tags: List[str] = []
        chars = 0
        listing = False  # whether some product sent a listing field
        for i, product in enumerate(request.products):
            title: str = product.title
            if title.isspace():  # msgspec's min_length already rejected ""
                raise ApiError.invalid(f"products[{i}].title", "expected a non-empty string, got whitespace")
            tag: str = product.concatenated_tags or ""
            if tag.isspace():  # the model's tags head is for products with tags
                tag = ""
            titles.append(title)
            tags.append(tag)
            chars += len(title) + len(tag)
            # Spelt out rather than a loop or a getter's tuple: a product of a title only
            # pays five attribute reads (~0.15 us), and no column is built for it.
            listing = listing or (
                product.seller_id is not None
                or product.price is not None
                or product.weight is not None
                or product.minimum_quantity is not None
                or product.express_delivery is not None
            )
        fields = _listing_columns(request.products) if listing else {}
        return Batch(titles, tags, chars, fields)


def _listing_columns(products: List[Any]) -> Dict[str, List[Any]]:
    """A column per listing field some product sent, None where one did not; the seller as
    the string the model takes, "" for unknown."""
    columns = {}
    for name, get in _LISTING_GETTERS:
        column = list(map(get, products))
        if column.count(None) != len(column):
            columns[name] = column
    sellers = columns.get(INPUT_SELLER)
    if sellers is not None:
        # As training reads the file's ids: surrounding white space is no part of an id.
        columns[INPUT_SELLER] = ["" if seller is None else str(seller).strip() for seller in sellers]
    return columns


def _schema_error(text: str, allowed: Dict[str, str]) -> ApiError:
    match = _ERROR_PATH.match(text)
    assert match is not None  # the pattern matches any string
    message, path = match["message"], (match["path"] or "").lstrip(".")
    missing = _MISSING_FIELD.match(message)
    if missing:
        field = f"{path}.{missing['name']}" if path else missing["name"]
        return ApiError.invalid(field, "required field is missing")
    product_field = _PRODUCT_FIELD.match(path)
    if product_field and product_field["name"] in allowed:
        got = _GOT.search(message)
        return ApiError.invalid(path, allowed[product_field["name"]] + (f", got {got['got']}" if got else ""))
    return ApiError.invalid(path or "body", _sentence_case(message))


def _syntax_error(body: Union[bytes, bytearray], text: str) -> ApiError:
    if _SURROGATE_ESCAPE.search(body):
        field = _surrogate_field(body)
        if field is not None:
            return ApiError.invalid(field, "contains a lone UTF-16 surrogate, which is not valid text")
    return ApiError.invalid("body", "not valid JSON: " + _sentence_case(text))


def _sentence_case(text: str) -> str:
    """msgspec's message as a clause after "field: ": "Expected" -> "expected", "JSON" stays."""
    if text[1:2].isupper():
        return text
    return text[:1].lower() + text[1:]


def _is_utf8(body: Union[bytes, bytearray]) -> bool:
    """Whether the body is valid UTF-8. An ASCII body needs no decoding; a big one is
    decoded a slice at a time, since a whole 4 MiB body with one emoji in it would be a
    16 MiB str (four bytes a character) for nothing."""
    if body.isascii():
        return True
    try:
        if len(body) <= _UTF8_SLICE_BYTES:  # the usual request: one decode, no decoder to make
            body.decode("utf-8")
            return True
        decoder = codecs.getincrementaldecoder("utf-8")()
        view = memoryview(body)
        for start in range(0, len(view), _UTF8_SLICE_BYTES):
            decoder.decode(view[start : start + _UTF8_SLICE_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _surrogate_field(body: Union[bytes, bytearray]) -> Optional[str]:
    """The products[i].<field> holding a lone surrogate, "body" when another string holds
    one (a field the service ignores, a key: msgspec refuses the body all the same), None
    when none does; error path only, so slow is fine."""
    try:
        document = json.loads(body)  # the stdlib accepts lone surrogates
    except (ValueError, RecursionError):
        return None
    products = document.get("products") if isinstance(document, dict) else None
    for i, product in enumerate(products if isinstance(products, list) else []):
        for name in ("title", "concatenated_tags", INPUT_SELLER):
            value = product.get(name) if isinstance(product, dict) else None
            if isinstance(value, str) and _SURROGATE.search(value):
                return f"products[{i}].{name}"
    # A valid pair, once decoded, is one character outside the range: only lone ones match.
    return "body" if _SURROGATE.search(json.dumps(document, ensure_ascii=False)) else None


def openapi_document(settings: Settings) -> Dict[str, Any]:
    """OpenAPI 3.1 description of the service, generated from the same Structs."""
    (request_ref, response_ref, problem_ref, model_ref), components = msgspec.json.schema_components(
        [request_type(settings), CategorizeResponse, Problem, ModelCard],
        ref_template="#/components/schemas/{name}",
    )
    problem = {"application/problem+json": {"schema": problem_ref}}

    def plain(description: str, media: str = "text/plain") -> Dict[str, Any]:
        return {"description": description, "content": {media: {"schema": {"type": "string"}}}}

    def answer(description: str, content: Dict[str, Any], **headers: Any) -> Dict[str, Any]:
        return {"description": description, "headers": {**_ANSWER_HEADERS, **headers}, "content": content}

    categorize = {
        "summary": "Category of each product, in request order.",
        "parameters": [_INCLUDE_PARAMETER, *_REQUEST_HEADERS],
        "requestBody": {"required": True, "content": {"application/json": {"schema": request_ref}}},
        "responses": {
            "200": answer(
                "One category per product, same order and length; with ?include=probabilities, "
                "every label's probability per product too.",
                {"application/json": {"schema": response_ref}},
                **{SERVER_TIMING_HEADER: _SERVER_TIMING},
            ),
            "400": answer(
                "Invalid body or query; `field` names the offending field (`include` for an "
                "unknown include value).",
                problem,
            ),
            "408": answer(f"Body not received within {settings.body_timeout_seconds:g} s.", problem),
            "413": answer(f"Body over {settings.max_body_bytes} bytes.", problem),
            "415": answer("A Content-Encoding other than identity.", problem),
            "417": answer(
                "An Expect header other than 100-continue. With `Expect: 100-continue`, "
                "100 Continue comes only once the request is admitted: a request refused "
                "before its body (413, 415, 503) gets that answer instead, and the "
                "connection closes.",
                problem,
            ),
            "500": answer("Server bug (logged); generic message.", problem),
            "503": answer(
                (
                    "Busy (admission control: the request would wait longer than "
                    f"{settings.max_queue_seconds:g} s, or its body does not fit the pending "
                    "budget) or shutting down; retry after `Retry-After` seconds, on this "
                    "server or another."
                ),
                problem,
                **{
                    "Retry-After": {
                        "description": "Seconds until the work queued now is done.",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    }
                },
            ),
        },
    }
    model = {
        "summary": "The model this server runs: version, labels, inputs, metrics, confidence table.",
        "parameters": list(_REQUEST_HEADERS),
        "responses": {
            "200": answer(
                "Read from the model file at start-up. Keys the file lacks are left out: "
                "`confidence` is only in files exported since the confidence table exists.",
                {"application/json": {"schema": model_ref}},
            )
        },
    }
    ready = {
        "200": plain("Model loaded and warmed up; send traffic."),
        "503": plain("Draining before shutdown; stop sending traffic."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Elo7 product categorizer",
            "version": "1",
            "description": (
                "Every error is application/problem+json (RFC 9457). Besides the statuses "
                "listed per operation, a path not listed here answers 404, and a method not "
                "listed for a path answers 405 with an Allow header."
            ),
        },
        "paths": {
            "/v1/categorize": {"post": categorize},
            "/v1/model": {"get": model},
            "/healthz": {"get": {"summary": "Process alive.", "responses": {"200": plain("Alive.")}}},
            "/readyz": {"get": {"summary": "Ready for traffic.", "responses": ready}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": plain("Metrics.")}}},
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


_INCLUDE_PARAMETER = {
    "name": INCLUDE,
    "in": "query",
    "required": False,
    "description": (
        "`probabilities` adds `probabilities` to the answer; any other value is a 400 "
        'naming `include`. Without it the answer is exactly {"categories": [...]}.'
    ),
    "schema": {"type": "string", "enum": [INCLUDE_PROBABILITIES]},
}
_REQUEST_HEADERS = (
    {
        "name": REQUEST_ID_HEADER,
        "in": "header",
        "required": False,
        "description": (
            f"Echoed in the answer and logged; 1 to {MAX_REQUEST_ID_CHARS} printable ASCII "
            "characters, anything else is replaced by a generated id."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_REQUEST_ID_CHARS,
            "pattern": "^[ -~]*$",
        },
    },
    {
        "name": TRACEPARENT_HEADER,
        "in": "header",
        "required": False,
        "description": "W3C Trace Context; its trace id is logged. An invalid one is ignored.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
    },
)
_ANSWER_HEADERS = {
    REQUEST_ID_HEADER: {
        "description": "The request's X-Request-ID, or the one generated for it; also in problem bodies.",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID_CHARS},
    },
    MODEL_VERSION_HEADER: {
        "description": "The loaded model file: the first 12 hex digits of its SHA-256 (GET /v1/model).",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
    },
}
_SERVER_TIMING = {
    "description": "`model;dur=MS, total;dur=MS`: the model call and the time in the service.",
    "required": True,
    "schema": {"type": "string"},
}
