"""The confidence table (categorizer/confidence.py) and its place in the exported file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import pytest

from categorizer import confidence, export
from categorizer.features import Doc, FeatureSpec
from categorizer.prepare import clean
from categorizer.sklearn_twin import Fields
from categorizer.weights import CONFIDENCE_KEY
from tests.test_onnx_parity import random_model

LABELS = ["a", "b", "c"]


def rows(*tops: float) -> np.ndarray:
    """Probabilities whose top is each value, always on label "a"."""
    return np.array([[top, (1 - top) / 2, (1 - top) / 2] for top in tops])


def test_coverage_and_precision_at_each_threshold() -> None:
    # Top probabilities 0.95 (right), 0.85 (wrong), 0.6 (right), 0.4 (wrong).
    table = confidence.table(["a", "b", "a", "c"], LABELS, rows(0.95, 0.85, 0.6, 0.4))
    by_threshold = {row["threshold"]: (row["coverage"], row["precision"]) for row in table["thresholds"]}
    assert list(by_threshold) == list(confidence.THRESHOLDS)
    assert by_threshold[0.5] == (0.75, round(2 / 3, confidence.DECIMALS))
    assert by_threshold[0.8] == (0.5, 0.5)
    assert by_threshold[0.9] == (0.25, 1.0)
    assert by_threshold[0.99] == (0.0, None)  # nothing that sure: no precision to give
    assert table["n"] == 4
    assert table["bins"] == confidence.CALIBRATION_BINS


def test_a_threshold_counts_a_top_probability_equal_to_it() -> None:
    table = confidence.table(["a"], LABELS, rows(0.9))
    assert [row["coverage"] for row in table["thresholds"]] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_the_predicted_label_is_the_top_column() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
    table = confidence.table(["b", "b"], LABELS, probabilities)
    assert table["thresholds"][0] == {"threshold": 0.5, "coverage": 1.0, "precision": 0.5}


def test_calibrated_probabilities_have_no_calibration_error() -> None:
    # In each bin the model is right as often as it says: 8 of 10 at 0.8, 3 of 10 at 0.3.
    top = np.array([0.8] * 10 + [0.3] * 10)
    correct = np.array([True] * 8 + [False] * 2 + [True] * 3 + [False] * 7)
    assert confidence.expected_calibration_error(top, correct) == pytest.approx(0.0, abs=1e-12)


def test_calibration_error_weights_each_bins_gap_by_its_rows() -> None:
    # 10 rows say 0.9 and are right half the time (gap 0.4); 30 say 0.5, right half (gap 0).
    top = np.array([0.9] * 10 + [0.5] * 30)
    correct = np.array([True, False] * 5 + [True, False] * 15)
    assert confidence.expected_calibration_error(top, correct) == pytest.approx(0.4 * 10 / 40)
    # Overconfidence and underconfidence in two bins do not cancel out.
    top = np.array([0.9, 0.9, 0.2, 0.2])
    correct = np.array([False, False, True, True])
    assert confidence.expected_calibration_error(top, correct) == pytest.approx((0.9 * 2 + 0.8 * 2) / 4)


def test_bins_are_closed_on_the_right() -> None:
    # 1/15 falls in the first bin with 0.05, so the two average (apart, their gaps would
    # be 0.93 and 0.05); 1.0 falls in the last bin.
    top = np.array([1 / 15, 0.05, 1.0])
    correct = np.array([True, False, True])
    first_bin = abs(0.5 - (1 / 15 + 0.05) / 2) * 2 / 3
    assert confidence.expected_calibration_error(top, correct, bins=15) == pytest.approx(first_bin)


def test_probabilities_must_have_a_row_per_product_and_a_column_per_label() -> None:
    with pytest.raises(ValueError, match="shape"):
        confidence.table(["a", "b"], LABELS, rows(0.9))


def test_evaluate_scores_every_view() -> None:
    seen: List[Tuple[List[Doc], Optional[Fields]]] = []

    def predict_proba(batch: List[Doc], fields: Optional[Fields]) -> np.ndarray:
        seen.append((batch, fields))
        return rows(*[0.9 if tags else 0.6 for _, tags in batch])

    frame = clean(
        pd.DataFrame(
            {
                "title": ["x", "y"],
                "concatenated_tags": ["t", "u"],
                "query": ["", ""],
                "category": ["a", "b"],
                "seller_id": [7, 8],
                "price": [1.0, None],
                "weight": [1.0, 2.0],
                "minimum_quantity": [1, 2],
                "express_delivery": [0, 1],
            }
        )
    )
    tables = confidence.evaluate(predict_proba, frame, LABELS)
    assert list(tables) == ["title_only", "title_and_tags", "title_and_fields", "title_tags_and_fields"]
    assert [batch for batch, _ in seen] == [[("x", ""), ("y", "")], [("x", "t"), ("y", "u")]] * 2
    assert [fields is None for _, fields in seen] == [True, True, False, False]
    with_fields = seen[2][1]
    assert with_fields is not None
    assert with_fields.sellers == ("7", "8")
    assert tables["title_only"]["thresholds"][1]["coverage"] == 0.0  # 0.6 < 0.7
    assert tables["title_and_tags"]["thresholds"][1] == {"threshold": 0.7, "coverage": 1.0, "precision": 0.5}


def test_export_writes_the_table_into_the_metadata(tmp_path: Path) -> None:
    model = random_model(FeatureSpec(n_features=2**8), seed=5)
    table = {"title_only": confidence.table(["b"], model.labels, np.array([[0.1, 0.6, 0.2, 0.1]]))}
    with_table = export.save(export.to_onnx(model, {}, "ab" * 32, table), tmp_path / "with.onnx")
    assert json.loads(export.read_metadata(with_table)[CONFIDENCE_KEY]) == table
    without = export.save(export.to_onnx(model, {}, "ab" * 32), tmp_path / "without.onnx")
    assert CONFIDENCE_KEY not in export.read_metadata(without)
