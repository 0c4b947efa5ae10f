"""Where the tests find data, and what they do when it is absent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import onnxruntime as ort
import pytest

# A product as a JSON client sends it.
Product = Dict[str, Any]

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


def listing_fields(row: Dict[str, str]) -> Product:
    """A CSV row's listing fields as a JSON client sends them: the seller as an
    integer, numbers as numbers, express delivery as a boolean; empty cells left out."""
    fields: Product = {"seller_id": int(row["seller_id"])} if row["seller_id"] else {}
    for name in ("price", "weight", "minimum_quantity"):
        if row[name]:
            fields[name] = float(row[name])
    if row["express_delivery"]:
        fields["express_delivery"] = row["express_delivery"] == "1"
    return fields


def python_feeds(session: ort.InferenceSession, batch: List[Product]) -> Dict[str, np.ndarray]:
    """What a Python caller feeds: "" for a missing string, NaN for a missing number,
    an integer seller id as its decimal string."""
    feeds = {}
    for given in session.get_inputs():
        values = [p.get(given.name) for p in batch]
        if given.type == "tensor(float)":
            numbers = [np.nan if v is None else float(v) for v in values]
            feeds[given.name] = np.array(numbers, dtype=np.float32)
        else:
            feeds[given.name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return feeds
