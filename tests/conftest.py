"""Shared fixtures: the model under test, settings and an in-process client."""

from __future__ import annotations

import csv
import json
from typing import Awaitable, Callable, Dict, List, Tuple

import onnxruntime as ort
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings
from tests.datasets import model_file, public_test_csv
from tests.servers import unused_port

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="session")
def model_path() -> str:
    """The model the service would serve: MODEL_PATH, else artifacts/model.onnx."""
    return str(model_file())


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
    return unused_port()


@pytest.fixture(scope="session")
def test_products() -> List[Dict[str, str]]:
    """Rows of the public test CSV (TEST_PRODUCTS_PATH), columns as in the file."""
    path = public_test_csv()
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    return rows


@pytest.fixture(scope="session")
def echo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The batch tests' echo model (tests/batch_files.echo_model), built once."""
    from tests.batch_files import echo_model  # pyarrow, only for the tests that ask

    return echo_model(tmp_path_factory.mktemp("echo") / "echo.onnx")
