"""How far the model's probabilities can be trusted: the confidence table.

For each input view clients send (the title alone, title + tags, each with and without
the listing fields: prepare.VIEWS), on held-out rows:
the share of products whose top probability reaches each threshold (coverage), how
often the category of those products is right (precision), and the expected
calibration error. A client that auto-accepts answers above a threshold reads its
precision and coverage here. The table goes into metrics.json and into the model's
metadata (weights.CONFIDENCE_KEY), which the service returns from `GET /v1/model`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from categorizer.features import Doc
from categorizer.prepare import VIEWS, view
from categorizer.sklearn_twin import Fields

# Top-probability thresholds of the table: where a catalogue team would draw the line
# between auto-accepting an answer and reviewing it.
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
# Equal-width bins of the top probability for the expected calibration error (Guo et
# al., 2017, use 15): enough to see miscalibration, few enough that each of ~6,000
# validation rows' bins holds dozens of rows.
CALIBRATION_BINS = 15
# Decimals kept in the table: four is a hundredth of a percentage point.
DECIMALS = 4


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """Sum over equal-width bins (lo, hi] of the top probability of the bin's share of
    rows times |its accuracy - its mean top probability|: 0 when, in every bin, the
    model is right as often as it says."""
    confidence = np.asarray(confidence, dtype=np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.intp) - 1, 0, bins - 1)
    said = np.bincount(which, weights=confidence, minlength=bins)
    right = np.bincount(which, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    return float(np.abs(right - said).sum() / confidence.size)


def table(truth: Sequence[str], labels: Sequence[str], probabilities: np.ndarray) -> Dict[str, Any]:
    """One view's table from the true categories and the model's probabilities
    (a row per product, a column per label in `labels` order)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(truth) or probabilities.shape != (len(truth), len(labels)):
        shape = (len(truth), len(labels))
        raise ValueError(f"expected probabilities of shape {shape}, rows > 0, got {probabilities.shape}")
    top = probabilities.max(axis=1)
    correct = np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)] == np.asarray(
        truth, dtype=object
    )
    rows: List[Dict[str, Any]] = []
    for threshold in THRESHOLDS:
        kept = top >= threshold
        precision = round(float(correct[kept].mean()), DECIMALS) if kept.any() else None
        rows.append(
            {"threshold": threshold, "coverage": round(float(kept.mean()), DECIMALS), "precision": precision}
        )
    return {
        "n": len(truth),
        "ece": round(expected_calibration_error(top, correct), DECIMALS),
        "bins": CALIBRATION_BINS,
        "thresholds": rows,
    }


def evaluate(
    predict_proba: Callable[[List[Doc], Optional[Fields]], np.ndarray],
    frame: pd.DataFrame,
    labels: Sequence[str],
) -> Dict[str, Dict[str, Any]]:
    """The table for each input view a client may send (prepare.VIEWS), like
    validation.evaluate's reports."""
    truth = frame["category"].tolist()
    return {name: table(truth, labels, predict_proba(*view(frame, name))) for name in VIEWS}
