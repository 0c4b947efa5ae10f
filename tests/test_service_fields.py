"""Issue 13's listing fields end to end, with a small ONNX model that takes them: the
model card lists its inputs, and every product's fields reach the graph in its own row
(the committed model takes title and tags only, so it cannot show either)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import onnx
import pytest
from onnx import TensorProto, helper

from service.app import create_app
from service.settings import Settings
from service.state import STATE
from tests.conftest import AiohttpClient, Client

LABELS = ["barato", "caro", "sem preço", "vip"]
VIP = "vip"


def fields_model(path: Path) -> Path:
    """A graph with the seven inputs of a model from feature format 4 on, whose label says
    what it read: "vip" for the seller "vip", else by price: "caro" above 100, "barato"
    at or below, "sem preço" when unknown (NaN)."""
    strings = [
        helper.make_tensor_value_info(n, TensorProto.STRING, ["N"]) for n in ("title", "concatenated_tags")
    ]
    seller = [helper.make_tensor_value_info("seller_id", TensorProto.STRING, ["N"])]
    numbers = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"])
        for n in ("price", "weight", "minimum_quantity", "express_delivery")
    ]

    def constant(name: str, kind: int, value: Any) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, kind, [], [value]))

    nodes = [
        constant("hundred", TensorProto.FLOAT, 100.0),
        *(constant(label, TensorProto.STRING, label.encode()) for label in LABELS),
        constant("vip_id", TensorProto.STRING, VIP.encode()),
        helper.make_node("Greater", ["price", "hundred"], ["expensive"]),
        helper.make_node("IsNaN", ["price"], ["unknown"]),
        helper.make_node("Where", ["unknown", "sem preço", "barato"], ["cheap"]),
        helper.make_node("Where", ["expensive", "caro", "cheap"], ["by_price"]),
        helper.make_node("Equal", ["seller_id", "vip_id"], ["is_vip"]),  # strings: opset 19
        helper.make_node("Where", ["is_vip", "vip", "by_price"], ["label"]),
        helper.make_node("Cast", ["expensive"], ["one"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["one", "axis"], ["column"]),
        helper.make_node("Concat", ["column"] * len(LABELS), ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fields",
        strings + seller + numbers,
        [
            helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)]),
        ],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    helper.set_model_props(model, {"labels": json.dumps(LABELS)})
    onnx.save(model, str(path))
    return path


def expected(product: Dict[str, Any]) -> str:
    if str(product.get("seller_id")) == VIP:
        return "vip"
    price = product.get("price")
    if price is None:
        return "sem preço"
    return "caro" if price > 100 else "barato"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings, tmp_path: Path) -> Client:
    path = fields_model(tmp_path / "fields.onnx")
    return await aiohttp_client(create_app(dataclasses.replace(settings, model_path=str(path))))


async def categories(client: Client, products: List[Dict[str, Any]]) -> List[str]:
    response = await client.post("/v1/categorize", json={"products": products})
    assert response.status == 200, await response.text()
    result: List[str] = (await response.json())["categories"]
    return result


async def test_the_model_card_lists_every_input_the_file_takes(client: Client) -> None:
    card = await (await client.get("/v1/model")).json()
    assert card["inputs"] == [
        {"name": "title", "type": "tensor(string)", "optional": False},
        {"name": "concatenated_tags", "type": "tensor(string)", "optional": True},
        {"name": "seller_id", "type": "tensor(string)", "optional": True},
        {"name": "price", "type": "tensor(float)", "optional": True},
        {"name": "weight", "type": "tensor(float)", "optional": True},
        {"name": "minimum_quantity", "type": "tensor(float)", "optional": True},
        {"name": "express_delivery", "type": "tensor(float)", "optional": True},
    ]


async def test_each_product_gets_its_own_fields_through_sub_batches(client: Client) -> None:
    # More products than a sub-batch, titles of shuffled lengths (the sort reorders them),
    # prices known, unknown, cheap and dear, some sellers "vip", one as an integer.
    products: List[Dict[str, Any]] = []
    for i in range(700):
        product: Dict[str, Any] = {"title": f"Produto {i} " + "x" * ((i * 7) % 31)}
        if i % 3:
            product["price"] = (i * 37) % 250
        if i % 5 == 0:
            product["seller_id"] = VIP if i % 2 else i
        products.append(product)
    assert len({expected(p) for p in products}) == len(LABELS)
    assert await categories(client, products) == [expected(p) for p in products]


async def test_requests_with_and_without_fields_share_calls_and_keep_their_own(client: Client) -> None:
    kinds: List[List[Dict[str, Any]]] = [
        [{"title": "a", "price": 500}, {"title": "b"}],
        [{"title": "c"}],  # no field at all: its rows in a shared call are unknown
        [{"title": "d", "seller_id": VIP}, {"title": "e", "price": 1, "express_delivery": True}],
        [{"title": "f", "price": None, "seller_id": ""}],
    ]
    requests = kinds * 5
    answers = await asyncio.gather(*(categories(client, products) for products in requests))
    assert answers == [[expected(p) for p in products] for products in requests]
    scheduler = client.app[STATE].scheduler
    assert scheduler.calls < scheduler.requests == len(requests), "no call was shared"
