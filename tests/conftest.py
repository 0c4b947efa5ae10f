"""Shared fixtures: the model under test, settings and an in-process client."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Tuple

import onnxruntime as ort
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


def skip_or_fail(reason: str) -> None:
    """REQUIRE_DATA=1 (CI) turns "data file missing" from a visible skip into a failure."""
    if os.environ.get("REQUIRE_DATA") == "1":
        pytest.fail(f"{reason} (REQUIRE_DATA=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def model_path() -> str:
    """The model the service would serve: MODEL_PATH, else artifacts/model.onnx."""
    path = Path(os.environ.get("MODEL_PATH") or ROOT / "artifacts" / "model.onnx")
    if not path.is_file():
        skip_or_fail(f"no model at {path}; train it or set MODEL_PATH")
    return str(path)


@pytest.fixture(scope="session")
def model_labels(model_path: str) -> Tuple[str, ...]:
    """Category names from the model's metadata, read independently of the service."""
    meta = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).get_modelmeta()
    labels = json.loads(meta.custom_metadata_map["labels"])
    assert isinstance(labels, list)
    return tuple(labels)


@pytest.fixture
def settings(model_path: str) -> Settings:
    return Settings(model_path=model_path, workers=1, drain_seconds=0.0, grace_seconds=1.0)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def test_products() -> List[Dict[str, str]]:
    """Rows of the public test CSV (TEST_PRODUCTS_PATH), columns as in the file."""
    default = ROOT.parent / "shared" / "data" / "test_products.csv"
    path = Path(os.environ.get("TEST_PRODUCTS_PATH") or default)
    if not path.is_file():
        skip_or_fail(f"no test products at {path}; set TEST_PRODUCTS_PATH")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    return rows
