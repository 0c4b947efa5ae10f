"""The model card (service/model_card.py, GET /v1/model) of files with and without the
confidence table, built from small random models as export writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import msgspec
import numpy as np
import pytest

from categorizer import confidence, export, weights
from categorizer.features import FeatureSpec
from runtime.categorizer import Categorizer
from runtime.identity import model_version
from service import model_card
from tests.test_onnx_parity import random_model

SPEC = FeatureSpec(n_features=2**8)
LABELS = random_model(SPEC, seed=3).labels
METRICS = {"validation.title_only": {"accuracy": 0.5, "macro_f1": 0.4}}


def table(labels: Sequence[str]) -> Dict[str, Any]:
    probabilities = np.array([[0.1, 0.6, 0.2, 0.1], [0.97, 0.01, 0.01, 0.01]])
    view = confidence.table([labels[1], labels[2]], labels, probabilities)
    return {"title_only": view, "title_and_tags": view}


def saved(tmp_path: Path, confidence_table: Optional[Dict[str, Any]], **replaced: str) -> Path:
    """A small model as export writes it, some metadata values replaced."""
    proto = export.to_onnx(random_model(SPEC, seed=3), METRICS, "cd" * 32, confidence_table)
    for prop in proto.metadata_props:
        if prop.key in replaced:
            prop.value = replaced[prop.key]
    return export.save(proto, tmp_path / "model.onnx")


def card_of(path: Path) -> Dict[str, Any]:
    card: Dict[str, Any] = msgspec.to_builtins(model_card.model_card(Categorizer.load(str(path))))
    return card


def test_the_service_reads_the_keys_export_writes() -> None:
    assert model_card.FEATURE_SPEC_KEY == weights.FEATURE_SPEC_KEY
    assert model_card.METRICS_KEY == weights.METRICS_KEY
    assert model_card.DATA_SHA256_KEY == weights.DATA_SHA256_KEY
    assert model_card.CONFIDENCE_KEY == weights.CONFIDENCE_KEY


def test_a_file_with_the_table_shows_it(tmp_path: Path) -> None:
    path = saved(tmp_path, table(LABELS))
    card = card_of(path)
    assert card["version"] == model_version(str(path))
    assert card["labels"] == LABELS
    assert card["feature_spec_format_version"] == SPEC.format_version
    assert card["training_data_sha256"] == "cd" * 32
    assert card["metrics"] == METRICS
    assert card["confidence"] == table(LABELS)


def test_a_file_from_before_the_table_leaves_it_out(tmp_path: Path) -> None:
    card = card_of(saved(tmp_path, None))
    assert "confidence" not in card
    assert card["metrics"] == METRICS


@pytest.mark.parametrize("bad", ["not json", '{"title_only": {"n": "many"}}'])
def test_an_unreadable_table_is_left_out_with_a_warning(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    card = card_of(saved(tmp_path, table(LABELS), **{weights.CONFIDENCE_KEY: bad}))
    assert "confidence" not in card
    assert card["metrics"] == METRICS  # the rest of the card stands
    warnings = [r.__dict__.get("key") for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [weights.CONFIDENCE_KEY]
