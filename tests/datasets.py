"""Where the tests find data, and what they do when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def skip_or_fail(reason: str) -> None:
    """REQUIRE_DATA=1 (CI) turns "data file missing" from a visible skip into a failure."""
    if os.environ.get("REQUIRE_DATA") == "1":
        pytest.fail(f"{reason} (REQUIRE_DATA=1)")
    pytest.skip(reason)


def training_csv() -> Path:
    """DATASET_PATH, else the shared copy; skips (or fails in CI) when absent."""
    path = Path(os.environ.get("DATASET_PATH") or SHARED_DATA / "elo7_train.csv")
    if not path.is_file():
        skip_or_fail(f"no training data at {path}; set DATASET_PATH")
    return path


def public_test_csv() -> Path:
    path = Path(os.environ.get("TEST_PRODUCTS_PATH") or SHARED_DATA / "test_products.csv")
    if not path.is_file():
        skip_or_fail(f"no test products at {path}; set TEST_PRODUCTS_PATH")
    return path


def model_file() -> Path:
    path = Path(os.environ.get("MODEL_PATH") or ROOT / "artifacts" / "model.onnx")
    if not path.is_file():
        skip_or_fail(f"no model at {path}; run `make train` or set MODEL_PATH")
    return path
