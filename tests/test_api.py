"""Contract tests of the HTTP API, in-process (pytest-aiohttp)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import json
import logging
import re
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
)

import msgspec
import numpy as np
import onnxruntime as ort
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from runtime.categorizer import LISTING_FIELDS, Categorizer, Column
from runtime.identity import model_version
from service.access_log import access_logger, access_logger_class
from service.app import create_app
from service.logs import JsonFormatter
from service.settings import DEFAULT_MAX_PRODUCTS, Settings
from service.state import STATE
from tests.datasets import listing_fields, python_feeds

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]
URL = "/v1/categorize"
PROBLEM = "application/problem+json"


async def post(client: Client, body: Any) -> ClientResponse:
    """POSTs bytes as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    # aiohttp warns on raw bytes over 1 MiB; a BytesIO still sends a Content-Length.
    return await client.post(URL, data=io.BytesIO(data), headers={"Content-Type": "application/json"})


async def categories_of(client: Client, products: List[Dict[str, Any]]) -> List[str]:
    response = await post(client, {"products": products})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert list(body) == ["categories"]
    result: List[str] = body["categories"]
    assert len(result) == len(products)
    return result


async def assert_problem(response: ClientResponse, status: int, field: Optional[str]) -> Dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    problem: Dict[str, Any] = await response.json(content_type=PROBLEM)
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    if field is not None:
        assert problem["field"] == field
        assert problem["detail"].startswith(f"{field}: ")
    assert "Traceback" not in problem["detail"]
    return problem


async def assert_still_serves(client: Client, labels: Tuple[str, ...]) -> None:
    [category] = await categories_of(client, [{"title": "Caneca personalizada"}])
    assert category in labels


async def rejects(
    client: Client, labels: Tuple[str, ...], body: Any, field: Optional[str], status: int = 400
) -> Dict[str, Any]:
    problem = await assert_problem(await post(client, body), status, field)
    await assert_still_serves(client, labels)
    return problem


# --- Rejections: one test per class of bad input -------------------------------------------


async def test_rejects_malformed_json(client: Client, model_labels: Tuple[str, ...]) -> None:
    problem = await rejects(client, model_labels, b'{"products": [}', "body")
    assert problem["detail"].startswith("body: not valid JSON: JSON is malformed")


async def test_rejects_truncated_json(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, b'{"products": [{"title": "Caneca"', "body")


async def test_rejects_empty_body(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, b"", "body")


async def test_rejects_nan(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, b'{"products": [{"title": "a", "price": NaN}]}', "body")


async def test_rejects_trailing_garbage(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, b'{"products": [{"title": "a"}]} x', "body")


async def test_rejects_utf16_body(client: Client, model_labels: Tuple[str, ...]) -> None:
    body = json.dumps({"products": [{"title": "Caneca"}]}).encode("utf-16")
    await rejects(client, model_labels, body, "body")


@pytest.mark.parametrize(
    "body",
    [
        b'{"products": [{"title": "Cal\xe7a"}]}',
        b'{"products": [{"title": "Caneca", "note": "\xff\xfe"}]}',  # a field the service ignores
        b'{"products": [{"title": "Caneca", "\xff": 1}]}',  # a key
        b'{"products": [{"title": "Caneca"}], "x": "\xc3\x28"}',
    ],
    ids=["title", "ignored field", "key", "top level"],
)
async def test_rejects_invalid_utf8_anywhere(
    client: Client, model_labels: Tuple[str, ...], body: bytes
) -> None:
    await rejects(client, model_labels, body, "body")


@pytest.mark.parametrize("where", ["ignored field", "top level"])
async def test_rejects_deeply_nested(client: Client, model_labels: Tuple[str, ...], where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"products": [{"title": "a", "x": ' + deep + b"}]}" if where == "ignored field" else deep
    await rejects(client, model_labels, body, "body")


@pytest.mark.parametrize("body", [[], [{"title": "a"}], "products", 1, None, True])
async def test_rejects_non_object_body(client: Client, model_labels: Tuple[str, ...], body: Any) -> None:
    await rejects(client, model_labels, body, "body")


async def test_rejects_missing_products(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, {"items": [{"title": "a"}]}, "products")


@pytest.mark.parametrize("products", [{"title": "a"}, "a", None, 3])
async def test_rejects_products_not_a_list(
    client: Client, model_labels: Tuple[str, ...], products: Any
) -> None:
    await rejects(client, model_labels, {"products": products}, "products")


@pytest.mark.parametrize("item", ["Caneca", 1, None, [{"title": "a"}]])
async def test_rejects_product_not_an_object(
    client: Client, model_labels: Tuple[str, ...], item: Any
) -> None:
    await rejects(client, model_labels, {"products": [{"title": "ok"}, item]}, "products[1]")


async def test_rejects_missing_title(client: Client, model_labels: Tuple[str, ...]) -> None:
    body = {"products": [{"title": "ok"}, {"title": "ok"}, {"concatenated_tags": "caneca"}]}
    await rejects(client, model_labels, body, "products[2].title")


@pytest.mark.parametrize("title", [1, 1.5, None, True, ["a"], {"a": 1}])
async def test_rejects_title_not_a_string(client: Client, model_labels: Tuple[str, ...], title: Any) -> None:
    await rejects(client, model_labels, {"products": [{"title": title}]}, "products[0].title")


async def test_rejects_empty_title(client: Client, model_labels: Tuple[str, ...]) -> None:
    await rejects(client, model_labels, {"products": [{"title": "ok"}, {"title": ""}]}, "products[1].title")


@pytest.mark.parametrize("title", [" ", "\t\n  ", "\u3000\u00a0"])
async def test_rejects_whitespace_only_title(
    client: Client, model_labels: Tuple[str, ...], title: str
) -> None:
    problem = await rejects(client, model_labels, {"products": [{"title": title}]}, "products[0].title")
    assert "non-empty" in problem["detail"]


async def test_rejects_title_over_limit(
    client: Client, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    body = {"products": [{"title": "a" * (settings.max_title_chars + 1)}]}
    await rejects(client, model_labels, body, "products[0].title")


async def test_accepts_title_at_limit(
    client: Client, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    [category] = await categories_of(client, [{"title": "a" * settings.max_title_chars}])
    assert category in model_labels


@pytest.mark.parametrize("field", ["title", "concatenated_tags"])
async def test_rejects_lone_surrogates(client: Client, model_labels: Tuple[str, ...], field: str) -> None:
    # json.dumps writes a lone surrogate as the escape \ud800, which JSON syntax allows.
    products = [{"title": "ok"}, {"title": "Caneca", "concatenated_tags": ""}]
    products[1][field] = "Can\ud800eca"
    problem = await rejects(client, model_labels, {"products": products}, f"products[1].{field}")
    assert "surrogate" in problem["detail"]


async def test_a_lone_surrogate_in_a_field_the_service_ignores_is_named_as_such(
    client: Client, model_labels: Tuple[str, ...]
) -> None:
    # msgspec refuses the body wherever the surrogate is; it used to say "truncated".
    body = {"products": [{"title": "Caneca", "note": "x\ud800"}]}
    problem = await rejects(client, model_labels, body, "body")
    assert problem["detail"] == "body: contains a lone UTF-16 surrogate, which is not valid text"


async def test_rejects_lone_surrogate_at_end_of_title(client: Client, model_labels: Tuple[str, ...]) -> None:
    # The escape right before the closing quote is another msgspec code path.
    await rejects(client, model_labels, rb'{"products": [{"title": "\udc00"}]}', "products[0].title")


@pytest.mark.parametrize("tags", [1, ["a", "b"], {"a": 1}, False])
async def test_rejects_tags_not_a_string(client: Client, model_labels: Tuple[str, ...], tags: Any) -> None:
    body = {"products": [{"title": "Caneca", "concatenated_tags": tags}]}
    await rejects(client, model_labels, body, "products[0].concatenated_tags")


async def test_rejects_tags_over_limit(
    client: Client, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    body = {"products": [{"title": "Caneca", "concatenated_tags": "a" * (settings.max_tags_chars + 1)}]}
    await rejects(client, model_labels, body, "products[0].concatenated_tags")


async def test_rejects_too_many_products(client: Client, model_labels: Tuple[str, ...]) -> None:
    body = {"products": [{"title": "a"}] * (DEFAULT_MAX_PRODUCTS + 1)}
    await rejects(client, model_labels, body, "products")


async def test_rejects_a_compressed_body_with_415(client: Client) -> None:
    body = gzip.compress(b'{"products": [{"title": "Caneca"}]}')
    response = await client.post(
        "/v1/categorize", data=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    await assert_problem(response, 415, "body")


async def test_rejects_body_over_limit_with_413(
    client: Client, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    body = b" " * (settings.max_body_bytes + 1)  # Content-Length says it: refused unread
    await rejects(client, model_labels, body, "body", status=413)


async def test_rejects_chunked_body_over_limit_with_413(
    aiohttp_client: AiohttpClient, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    small = dataclasses.replace(settings, max_body_bytes=4096)
    client = await aiohttp_client(create_app(small))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp cuts it while reading
        for _ in range(10):
            yield b" " * 1024

    response = await client.post(URL, data=chunks())
    await assert_problem(response, 413, "body")
    await assert_still_serves(client, model_labels)


class RawAnswer(NamedTuple):
    status_lines: List[str]  # every status line read: an interim 100 Continue, then the answer
    headers: Dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """An HTTP/1.1 answer read off the wire, interim 1xx answers included."""
    status_lines = []
    while True:
        status_lines.append((await reader.readline()).decode().strip())
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if not status_lines[-1].startswith("HTTP/1.1 1"):
            break
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawAnswer(status_lines, headers, body)


async def send_raw(client: Client, data: bytes) -> RawAnswer:
    """Sends `data` as it is on a connection of its own and reads the answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 5)
    finally:
        writer.close()


def expect_head(length: int, expect: str = "100-continue") -> bytes:
    return (
        f"POST {URL} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: {expect}\r\n\r\n"
    ).encode()


async def test_expect_100_continue_is_answered_once_the_request_is_admitted(client: Client) -> None:
    body = json.dumps({"products": [{"title": "Caneca personalizada"}]}).encode()
    assert client.port is not None
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(expect_head(len(body)))
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 100 Continue")
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert [line.split()[:2] for line in answer.status_lines] == [["HTTP/1.1", "200"]]
    assert len(json.loads(answer.body)["categories"]) == 1


async def test_a_request_refused_before_its_body_gets_no_100_continue(
    client: Client, model_labels: Tuple[str, ...], settings: Settings
) -> None:
    # The client waits for 100 Continue before uploading: it gets the 413 without
    # sending a byte of the body, and the connection closes, since the body never comes
    # (aiohttp then waits a while for the client to close, as clients do on
    # `Connection: close`).
    answer = await send_raw(client, expect_head(settings.max_body_bytes + 1))
    # One answer, no interim 100 (the reason phrase differs between Python versions).
    assert [line.split()[:2] for line in answer.status_lines] == [["HTTP/1.1", "413"]]
    assert answer.headers["content-type"] == PROBLEM
    assert answer.headers["connection"] == "close"
    assert json.loads(answer.body)["field"] == "body"
    await assert_still_serves(client, model_labels)


async def test_an_empty_expect_header_expects_nothing(client: Client) -> None:
    body = json.dumps({"products": [{"title": "Caneca personalizada"}]}).encode()
    answer = await send_raw(client, expect_head(len(body), expect="") + body)
    assert [line.split()[:2] for line in answer.status_lines] == [["HTTP/1.1", "200"]]


async def test_an_unknown_expectation_is_a_417_problem(client: Client, model_labels: Tuple[str, ...]) -> None:
    response = await client.post(URL, data=b"{}", headers={"Expect": "something-else"})
    problem = await assert_problem(response, 417, None)
    assert "100-continue" in problem["detail"]
    assert problem["request_id"] == response.headers["X-Request-ID"]
    await assert_still_serves(client, model_labels)


async def test_unknown_path_404_json(client: Client, model_labels: Tuple[str, ...]) -> None:
    response = await client.get("/v1/categorise")
    problem = await assert_problem(response, 404, None)
    assert problem["instance"] == "/v1/categorise"
    await assert_still_serves(client, model_labels)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_405_json(client: Client, model_labels: Tuple[str, ...], method: str) -> None:
    response = await client.request(method, URL)
    await assert_problem(response, 405, None)
    assert response.headers["Allow"] == "POST"
    await assert_still_serves(client, model_labels)


async def test_unexpected_error_is_500_problem_without_details(
    client: Client,
    model_labels: Tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(texts: Any) -> Any:
        raise RuntimeError("secret internal state")

    monkeypatch.setattr(client.app[STATE].model, "predict_with_probabilities", broken)
    response = await post(client, {"products": [{"title": "Caneca"}]})
    problem = await assert_problem(response, 500, None)
    assert "secret" not in await response.text()
    assert "unexpected" in problem["detail"]
    assert any(r.exc_info and "secret internal state" in str(r.exc_info[1]) for r in caplog.records)


# --- Happy paths ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_model(model_path: str) -> Categorizer:
    return Categorizer.load(model_path)


async def test_one_product(client: Client, model_labels: Tuple[str, ...]) -> None:
    [category] = await categories_of(
        client, [{"title": "Lembrancinha 15 anos", "concatenated_tags": "15 anos"}]
    )
    assert category in model_labels


@pytest.mark.parametrize("count", [2, 1000])
async def test_keeps_order_and_length(
    client: Client, direct_model: Categorizer, test_products: List[Dict[str, str]], count: int
) -> None:
    # Varied lengths and more rows than a sub-batch: exercises the length sort and its undoing.
    rows = [test_products[i % len(test_products)] for i in range(count)]
    products = [
        {"title": r["title"] + " x" * (i % 7), "concatenated_tags": r["concatenated_tags"]}
        for i, r in enumerate(rows)
    ]
    one_by_one = [direct_model.predict([p["title"]], [p["concatenated_tags"]])[0] for p in products]
    assert await categories_of(client, products) == one_by_one


async def test_ignores_extra_fields(client: Client) -> None:
    plain = [{"title": "Kit festa infantil", "concatenated_tags": "festa"}]
    extra = [{**plain[0], "nested": {"a": [1, None]}, "title_": 1, "Price": "not a listing field"}]
    body = {"products": extra, "request_id": "abc"}
    response = await post(client, body)
    assert response.status == 200
    assert (await response.json())["categories"] == await categories_of(client, plain)


@pytest.mark.parametrize("no_tags", [{}, {"concatenated_tags": ""}, {"concatenated_tags": None}])
async def test_missing_empty_and_null_tags_mean_the_same(client: Client, no_tags: Dict[str, Any]) -> None:
    title = "Porta retrato de madeira"
    assert await categories_of(client, [{"title": title, **no_tags}]) == await categories_of(
        client, [{"title": title, "concatenated_tags": ""}]
    )


async def test_tags_change_nothing_structurally(
    client: Client, model_labels: Tuple[str, ...], test_products: List[Dict[str, str]]
) -> None:
    rows = test_products[:50]
    with_tags = await categories_of(
        client, [{"title": r["title"], "concatenated_tags": r["concatenated_tags"]} for r in rows]
    )
    without = await categories_of(client, [{"title": r["title"]} for r in rows])
    assert len(with_tags) == len(without) == len(rows)
    assert set(with_tags) | set(without) <= set(model_labels)


async def test_empty_list_skips_the_model(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(texts: Any) -> Any:
        raise AssertionError("the model ran on an empty batch")

    monkeypatch.setattr(client.app[STATE].model, "predict_with_probabilities", must_not_run)
    response = await post(client, {"products": []})
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"categories": []}


async def test_categorizes_every_test_product(
    client: Client, model_labels: Tuple[str, ...], test_products: List[Dict[str, str]]
) -> None:
    products = [{"title": r["title"], "concatenated_tags": r["concatenated_tags"]} for r in test_products]
    categories = await categories_of(client, products)
    assert all(c in model_labels for c in categories)
    # The file's own labels must be ones the model knows, or the contract is off.
    assert {r["category"] for r in test_products} <= set(model_labels)


# --- Listing fields (issue 13) ----------------------------------------------------------------

LISTING = {
    "seller_id": 9835835,
    "price": 49.9,
    "weight": 300,
    "minimum_quantity": 10,
    "express_delivery": True,
}


@pytest.fixture
def model_calls(client: Client, monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, List[Any]]]:
    """The columns of every call the service makes to its model (which still runs)."""
    calls: List[Dict[str, List[Any]]] = []
    real = client.app[STATE].model.predict_with_probabilities

    def spy(columns: Mapping[str, Column]) -> Tuple[List[str], np.ndarray]:
        calls.append({name: list(column) for name, column in columns.items()})
        return real(columns)

    monkeypatch.setattr(client.app[STATE].model, "predict_with_probabilities", spy)
    return calls


def takes_listing_fields(client: Client) -> bool:
    return bool(set(LISTING_FIELDS) & set(client.app[STATE].model.inputs))


async def test_listing_fields_reach_the_model_in_their_rows(
    client: Client, model_calls: List[Dict[str, List[Any]]]
) -> None:
    plain = [{"title": "Caneca personalizada"}, {"title": "Body de bebê"}, {"title": "Colar de prata"}]
    products = [plain[0], {**plain[1], **LISTING}, {**plain[2], "seller_id": "abc", "express_delivery": 0}]
    response = await post(client, {"products": products})
    assert response.status == 200
    assert model_calls == [
        {
            "title": [p["title"] for p in plain],
            "concatenated_tags": ["", "", ""],
            "seller_id": ["", "9835835", "abc"],
            "price": [None, 49.9, None],
            "weight": [None, 300.0, None],
            "minimum_quantity": [None, 10.0, None],
            "express_delivery": [None, True, 0.0],
        }
    ]
    if not takes_listing_fields(client):
        # A model from before the fields (the committed one) answers as if they were absent.
        assert await response.read() == await (await post(client, {"products": plain})).read()


async def test_listing_fields_follow_their_products_through_sub_batches(
    client: Client, model_calls: List[Dict[str, List[Any]]]
) -> None:
    # More products than a sub-batch, titles of shuffled lengths: the length sort reorders.
    count = 1000
    products = [
        {"title": f"Caneca {i} " + "azul " * ((i * 7) % 11), "seller_id": i, "price": i, "weight": i / 2}
        for i in range(count)
    ]
    assert len(await categories_of(client, products)) == count
    assert len(model_calls) > 1
    for columns in model_calls:
        ids = [int(title.split()[1]) for title in columns["title"]]
        assert columns["seller_id"] == [str(i) for i in ids]
        assert columns["price"] == [float(i) for i in ids]
        assert columns["weight"] == [i / 2 for i in ids]
    assert model_calls[0]["title"] != [p["title"] for p in products[: len(model_calls[0]["title"])]]


async def test_null_listing_fields_are_the_same_as_absent(
    client: Client, model_calls: List[Dict[str, List[Any]]]
) -> None:
    nulls = {name: None for name in LISTING_FIELDS}
    with_nulls = await post(client, {"products": [{"title": "Caneca", **nulls}, {"title": "Body"}]})
    without = await post(client, {"products": [{"title": "Caneca"}, {"title": "Body"}]})
    assert await with_nulls.read() == await without.read()
    assert [set(columns) for columns in model_calls] == [{"title", "concatenated_tags"}] * 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seller_id", True),
        ("seller_id", 1.5),
        ("seller_id", "s" * 65),
        ("seller_id", 2**63),
        ("price", -1),
        ("price", 1_000_001),
        ("price", False),
        ("price", "12.50"),
        ("weight", -0.5),
        ("weight", 2_000_000),
        ("weight", True),
        ("minimum_quantity", -1),
        ("minimum_quantity", 10**7),
        ("minimum_quantity", [1]),
        ("express_delivery", 2),
        ("express_delivery", 0.5),
        ("express_delivery", "yes"),
    ],
)
async def test_rejects_an_invalid_listing_field_naming_it(
    client: Client, model_labels: Tuple[str, ...], field: str, value: Any
) -> None:
    products = [{"title": f"Caneca {i}"} for i in range(7)] + [{"title": "Caneca", field: value}]
    problem = await rejects(client, model_labels, {"products": products}, f"products[7].{field}")
    assert "or null" in problem["detail"]  # says what the field takes


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_rejects_numbers_that_are_not_finite(
    client: Client, model_labels: Tuple[str, ...], number: bytes
) -> None:
    # NaN and Infinity are not JSON (the body is refused); 1e400 is, and is out of range.
    field = "products[0].weight" if number == b"1e400" else "body"
    await rejects(client, model_labels, b'{"products": [{"title": "a", "weight": ' + number + b"}]}", field)


# --- Ops endpoints --------------------------------------------------------------------------


async def test_healthz_and_readyz(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_readyz_503_while_draining_and_connections_close(
    client: Client, model_labels: Tuple[str, ...]
) -> None:
    client.app[STATE].draining = True
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.headers.get("Connection", "").lower() == "close"
    await assert_still_serves(client, model_labels)  # draining still serves


async def test_metrics_count_requests_and_predictions(client: Client, model_labels: Tuple[str, ...]) -> None:
    [category] = await categories_of(client, [{"title": "Caneca"}])
    await client.get("/nowhere")
    await client.get("/v1/categorize")  # a known path, the wrong method: its own route
    text = await (await client.get("/metrics")).text()
    assert 'categorizer_http_requests_total{route="/v1/categorize",status="200"} 1.0' in text
    assert 'categorizer_http_requests_total{route="/v1/categorize",status="405"} 1.0' in text
    assert 'categorizer_http_requests_total{route="unmatched",status="404"} 1.0' in text
    assert f'categorizer_predictions_total{{category="{category}"}} 1.0' in text
    assert "categorizer_products_per_request_bucket" in text
    assert "categorizer_http_request_duration_seconds_bucket" in text


async def test_metrics_count_top_probabilities_per_category(
    client: Client, model_labels: Tuple[str, ...]
) -> None:
    titles = ["Caneca personalizada", "Body de bebê", "Colar de prata", "Convite de casamento", "Caneca azul"]
    body = await (
        await post_to(client, f"{URL}?include=probabilities", {"products": [{"title": t} for t in titles]})
    ).json()
    families = {
        f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())
    }
    samples = families["categorizer_top_probability"].samples
    for label in model_labels:
        tops = [max(p.values()) for c, p in zip(body["categories"], body["probabilities"]) if c == label]
        mine = {
            s.labels["le"]: s.value
            for s in samples
            if s.name.endswith("_bucket") and s.labels["category"] == label
        }
        assert mine.keys() >= {"0.5", "0.9", "0.99", "+Inf"}
        for bound, count in mine.items():
            assert count == sum(top <= float(bound) for top in tops), (label, bound)


async def test_openapi_document_describes_the_schema(client: Client, settings: Settings) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    assert schemas["CategorizeRequest"]["properties"]["products"]["maxItems"] == settings.max_products
    assert schemas["Product"]["properties"]["title"]["maxLength"] == settings.max_title_chars
    assert schemas["Product"]["required"] == ["title"]
    product = schemas["Product"]["properties"]
    assert set(product) == {"title", "concatenated_tags", *LISTING_FIELDS}
    assert product["price"]["anyOf"][0] == {"type": "number", "minimum": 0, "maximum": settings.max_price}
    assert {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1} in product["seller_id"]["anyOf"]
    responses = doc["paths"]["/v1/categorize"]["post"]["responses"]
    # Every status the handler answers (499 goes to a client that has left: nobody reads it).
    assert set(responses) == {"200", "400", "408", "413", "415", "417", "500", "503"}
    assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "404" in doc["info"]["description"]
    assert "405" in doc["info"]["description"]


# --- Probabilities (?include=probabilities) ---------------------------------------------------


async def post_to(
    client: Client, path: str, body: Any, headers: Optional[Dict[str, str]] = None
) -> ClientResponse:
    return await client.post(path, data=json.dumps(body).encode(), headers=headers or {})


async def test_the_default_answer_is_unchanged_byte_for_byte(client: Client) -> None:
    response = await post(client, {"products": [{"title": "Caneca"}, {"title": "Body de bebê"}]})
    body = await response.read()
    categories = json.loads(body)["categories"]
    assert (
        body
        == b'{"categories":'
        + json.dumps(categories, ensure_ascii=False, separators=(",", ":")).encode()
        + b"}"
    )


@pytest.mark.parametrize("count", [3, 1000])
async def test_probabilities_are_the_models_own_output_per_label(
    client: Client,
    model_path: str,
    model_labels: Tuple[str, ...],
    test_products: List[Dict[str, str]],
    count: int,
) -> None:
    # 1,000 products: sub-batches sorted by length, so each row must find its way back.
    rows = [test_products[(i * 7) % len(test_products)] for i in range(count)]
    titles = [r["title"] + " ." * (i % 5) for i, r in enumerate(rows)]
    tags = [r["concatenated_tags"] if i % 2 else "" for i, r in enumerate(rows)]
    products: List[Dict[str, Any]] = [{"title": t, "concatenated_tags": g} for t, g in zip(titles, tags)]
    for i in range(0, count, 3):  # every third with its listing fields, mixed in the sub-batches
        products[i].update(listing_fields(rows[i]))
    response = await post_to(client, f"{URL}?include=probabilities", {"products": products})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert list(body) == ["categories", "probabilities"]
    # onnxruntime on a session of its own, one row at a time: nothing is recomputed.
    direct = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    for product, category, answer in zip(products, body["categories"], body["probabilities"]):
        [label], [row] = direct.run(["label", "probabilities"], python_feeds(direct, [product]))
        assert list(answer) == list(model_labels)  # every label, in the model's order
        assert category == label == max(answer, key=answer.__getitem__)
        # float32 values sent exactly: read back as float32, they are the graph's own
        # (to within the graph's batch-to-row difference, 1e-7 at most).
        np.testing.assert_allclose(np.array(list(answer.values()), dtype=np.float32), row, rtol=0, atol=1e-6)
    assert len(body["probabilities"]) == count


async def test_probabilities_of_no_products(client: Client) -> None:
    response = await post_to(client, f"{URL}?include=probabilities", {"products": []})
    assert await response.json() == {"categories": [], "probabilities": []}


@pytest.mark.parametrize(
    "query",
    [
        "include=probability",
        "include=",
        "include=probabilities,categories",
        "include=probabilities&include=x",
    ],
)
async def test_an_unknown_include_is_a_400_naming_it(
    client: Client, model_labels: Tuple[str, ...], query: str
) -> None:
    response = await post_to(client, f"{URL}?{query}", {"products": [{"title": "Caneca"}]})
    problem = await assert_problem(response, 400, "include")
    assert "probabilities" in problem["detail"]
    await assert_still_serves(client, model_labels)


async def test_include_may_be_repeated_and_other_parameters_are_ignored(client: Client) -> None:
    query = "include=probabilities&include=probabilities&page=2"
    body = await (await post_to(client, f"{URL}?{query}", {"products": [{"title": "Caneca"}]})).json()
    assert len(body["probabilities"]) == 1


# --- Identity and tracing headers -------------------------------------------------------------


async def test_every_categorize_answer_names_the_model(client: Client, model_path: str) -> None:
    version = model_version(model_path)
    answers = [
        await post(client, {"products": [{"title": "Caneca"}]}),
        await post(client, {"products": [{"title": " "}]}),
        await post_to(client, f"{URL}?include=x", {"products": []}),
        await client.post(URL, data=gzip.compress(b'{"products": []}'), headers={"Content-Encoding": "gzip"}),
    ]
    assert [r.status for r in answers] == [200, 400, 400, 415]
    assert {r.headers["X-Model-Version"] for r in answers} == {version}
    assert len(version) == 12


async def test_a_request_id_is_echoed_or_generated(client: Client) -> None:
    sent = "order-42/retry 1"
    echoed = await client.post(URL, json={"products": [{"title": "Caneca"}]}, headers={"X-Request-ID": sent})
    assert echoed.headers["X-Request-ID"] == sent
    generated = {
        (await client.post(URL, json={"products": [{"title": "Caneca"}]})).headers["X-Request-ID"]
        for _ in range(3)
    }
    assert len(generated) == 3
    assert all(re.fullmatch("[0-9a-f]{32}", rid) for rid in generated)
    assert (await client.get("/healthz", headers={"X-Request-ID": sent})).headers["X-Request-ID"] == sent


@pytest.mark.parametrize("sent", ["x" * 129, "tab\there", "", "caf\u00e9"])
async def test_a_request_id_that_is_not_1_to_128_printable_ascii_is_replaced(
    client: Client, sent: str
) -> None:
    response = await client.post(
        URL,
        json={"products": [{"title": "Caneca"}]},
        headers={"X-Request-ID": sent.encode().decode("latin-1")},
    )
    assert re.fullmatch("[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_a_request_id_of_128_printable_characters_is_kept(client: Client) -> None:
    sent = "".join(chr(32 + i % 95) for i in range(128)).strip() + "~"
    response = await client.post(URL, json={"products": []}, headers={"X-Request-ID": sent})
    assert response.headers["X-Request-ID"] == sent


async def test_problems_carry_the_request_id(client: Client) -> None:
    response = await client.post(URL, data=b"{", headers={"X-Request-ID": "abc-123"})
    problem = await assert_problem(response, 400, "body")
    assert problem["request_id"] == response.headers["X-Request-ID"] == "abc-123"
    missing = await assert_problem(await client.get("/nowhere"), 404, None)
    assert re.fullmatch("[0-9a-f]{32}", missing["request_id"])


async def test_server_timing_gives_the_model_time_and_the_total(client: Client) -> None:
    response = await post(client, {"products": [{"title": "Caneca"}]})
    timing = re.fullmatch(
        r"model;dur=(\d+\.\d{3}), total;dur=(\d+\.\d{3})", response.headers["Server-Timing"]
    )
    assert timing is not None, response.headers["Server-Timing"]
    model_ms, total_ms = map(float, timing.groups())
    assert 0 < model_ms <= total_ms
    # No model call, no model time.
    for answer in (await post(client, {"products": []}), await client.get("/healthz")):
        assert re.fullmatch(r"total;dur=\d+\.\d{3}", answer.headers["Server-Timing"])


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's JSON log lines (service.logs), as production writes them."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("categorizer")  # the access log's parent too
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_log_lines_about_a_request_carry_its_ids(
    client: Client, monkeypatch: pytest.MonkeyPatch, json_log: io.StringIO
) -> None:
    def broken(texts: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app[STATE].model, "predict_with_probabilities", broken)
    headers = {"X-Request-ID": "req-7", "traceparent": TRACEPARENT}
    response = await client.post(URL, json={"products": [{"title": "Caneca"}]}, headers=headers)
    assert response.status == 500
    [line] = [json.loads(text) for text in json_log.getvalue().splitlines()]
    assert line["message"].startswith("unhandled error")
    assert (line["request_id"], line["trace_id"]) == ("req-7", "4bf92f3577b34da6a3ce929d0e0e4736")
    await client.get("/healthz")  # a line logged about no request carries no id
    logging.getLogger("categorizer").warning("not about a request")
    assert "request_id" not in json.loads(json_log.getvalue().splitlines()[-1])


async def test_the_access_log_line_carries_the_ids(settings: Settings, json_log: io.StringIO) -> None:
    server = TestServer(create_app(settings))
    # As service.server runs it with ACCESS_LOG=on (TestServer's own arguments stop short).
    await server.start_server(access_log=access_logger(), access_log_class=access_logger_class(1.0))
    async with TestClient(server) as logged:
        headers = {"X-Request-ID": "req-8", "traceparent": TRACEPARENT}
        await logged.post(URL, json={"products": []}, headers=headers)
        await logged.get("/healthz")
    lines = [json.loads(text) for text in json_log.getvalue().splitlines()]
    access = [line for line in lines if line["message"] == "access"]
    assert [a["path"] for a in access] == ["/v1/categorize", "/healthz"]
    assert (access[0]["request_id"], access[0]["trace_id"]) == ("req-8", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert re.fullmatch("[0-9a-f]{32}", access[1]["request_id"])
    assert "trace_id" not in access[1]


# --- The model card (GET /v1/model) ------------------------------------------------------------

NUMBER_INPUTS = ("price", "weight", "minimum_quantity", "express_delivery")


async def test_the_model_card_describes_the_loaded_file(
    client: Client, model_path: str, model_labels: Tuple[str, ...]
) -> None:
    response = await client.get("/v1/model")
    assert response.status == 200
    card = await response.json()
    meta = (
        ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    assert card["version"] == model_version(model_path) == response.headers["X-Model-Version"]
    assert card["labels"] == list(model_labels)
    strings, numbers = "tensor(string)", "tensor(float)"
    assert card["inputs"] == [
        {"name": "title", "type": strings, "optional": False},
        {"name": "concatenated_tags", "type": strings, "optional": True},
        {"name": "seller_id", "type": strings, "optional": True},
        *({"name": name, "type": numbers, "optional": True} for name in NUMBER_INPUTS),
    ]
    assert card["feature_spec_format_version"] == json.loads(meta["feature_spec"])["format_version"]
    assert card["training_data_sha256"] == meta["training_data_sha256"]
    assert card["metrics"] == json.loads(meta["metrics"])
    # The confidence table is the file's (an older file has none, and the card leaves it
    # out: tests/test_model_card.py has both kinds).
    assert card.get("confidence") == (json.loads(meta["confidence"]) if "confidence" in meta else None)


# --- Fuzzing: nothing a client sends gets a 5xx ---------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_titles = st.one_of(st.text(max_size=30), _json_values)
_listing_values = st.one_of(
    _json_values, st.integers(), st.floats(), st.booleans(), st.sampled_from([0, 1, 0.0, 1.0, "", None])
)
_products = st.lists(
    st.fixed_dictionaries(
        {"title": _titles},
        optional={
            "concatenated_tags": _titles,
            "x": _json_values,
            **{
                name: _listing_values
                for name in ("seller_id", "price", "weight", "minimum_quantity", "express_delivery")
            },
        },
    )
    | _json_values,
    max_size=5,
)
_bodies = st.one_of(
    st.binary(max_size=64),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"products": _products}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"products": _products}).map(
        lambda v: json.dumps(v).encode()[: len(json.dumps(v)) // 2]
    ),
)


@pytest.fixture
def sync_client(settings: Settings) -> Iterator[Tuple[asyncio.AbstractEventLoop, Client]]:
    """A client on its own loop, for hypothesis, which drives examples synchronously."""
    loop = asyncio.new_event_loop()

    async def start() -> Client:
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


@hyp_settings(
    max_examples=2500,
    deadline=None,
    database=None,
    # The server is shared by all examples on purpose: it must survive all of them.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_bodies)
def test_fuzz_never_5xx(sync_client: Tuple[asyncio.AbstractEventLoop, Client], body: bytes) -> None:
    loop, client = sync_client

    async def check() -> None:
        response = await client.post(URL, data=body)
        assert response.status in (200, 400), (response.status, await response.text())
        if response.status == 200:
            payload = msgspec.json.decode(await response.read())
            sent = msgspec.json.decode(body)
            assert len(payload["categories"]) == len(sent["products"])
        else:
            assert response.content_type == PROBLEM

    loop.run_until_complete(check())


async def test_rejects_a_body_sent_too_slowly_with_408(
    aiohttp_client: AiohttpClient, settings: Settings, model_labels: Tuple[str, ...]
) -> None:
    slow = await aiohttp_client(create_app(dataclasses.replace(settings, body_timeout_seconds=0.2)))

    async def dribble() -> AsyncIterator[bytes]:
        yield b'{"products": ['
        await asyncio.sleep(2)
        yield b"]}"

    response = await slow.post(URL, data=dribble())
    await assert_problem(response, 408, "body")
    await assert_still_serves(slow, model_labels)


async def test_a_408_closes_its_connection(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    # The rest of the body may still come: on a kept connection it was read as the
    # body's tail, and the client's next request answered with a plain-text 400.
    slow = await aiohttp_client(create_app(dataclasses.replace(settings, body_timeout_seconds=0.2)))
    head = f"POST {URL} HTTP/1.1\r\nHost: test\r\nContent-Length: 60\r\n\r\n{{".encode()
    answer = await send_raw(slow, head)
    assert answer.status_lines[-1].startswith("HTTP/1.1 408")
    assert answer.headers.get("connection", "").lower() == "close"
