"""The model file's format: its weight tables, the grid their weights lie on, its metadata keys.

model.fit rounds the weights to the grid, onnx_graph stores them in the
tables, and export reads them back. numpy only: no scikit-learn, no onnx.
"""

from __future__ import annotations

from typing import List, Mapping, NamedTuple, Tuple

import numpy as np

from categorizer.heads import N_HEADS

# Metadata keys other languages read; part of the file's contract.
LABELS_KEY = "labels"
FEATURE_SPEC_KEY = "feature_spec"
METRICS_KEY = "metrics"
DATA_SHA256_KEY = "training_data_sha256"
# The confidence table (categorizer/confidence.py), by input view; files exported
# before it existed have none.
CONFIDENCE_KEY = "confidence"
# What each input of the graph is (JSON: type, unit, what "unknown" is), from
# feature format 4 on.
INPUTS_KEY = "inputs"

# Initializer names of the learned weights. WEIGHTS stacks one table per head,
# each [n_features + 1, 1 + n_classes] float32: per bucket, idf**2 then idf * coef
# for each class, so one gather (one cache miss per n-gram) fetches all an n-gram
# adds to its row's sums. The weights lie on a grid (round_weights) where
# these products are exact in float32; the graph widens them to float64 before
# summing, so the sums are scikit-learn's up to the order of additions: half a
# float64 table, and faster than float32 idf and coef multiplied in the graph
# (see docs/decisions.md, 'float32 weights on a rounding grid'). The last row
# of each table is zeros: the bucket of n-grams that run past their row's end.
# INTERCEPT is [n_heads, n_classes] float64. Heads in heads' order: title, tags.
WEIGHTS = "weights"
INTERCEPT = "intercept"
# FIELD_WEIGHTS stacks one table per head, each [field tokens, n_classes] float64:
# per token (sklearn_twin.FieldTokens' layout), its value times each class's
# coefficient, zero for the unknowns. The values are powers of two, so the
# coefficients read back exactly.
FIELD_WEIGHTS = "field_weights"


class HeadWeights(NamedTuple):
    """One head's weights: idf [n_features], coef [n_classes, n_features], intercept
    [n_classes], and field_coef [n_classes, field tokens]."""

    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    field_coef: np.ndarray


# Significant bits kept of idf and of coefficients: 11 + 13 = 24, float32's
# mantissa, so that idf**2 and idf * coef are exact in float32, and the ONNX
# file's float32 table of those products scores exactly as scikit-learn does
# (see WEIGHTS). A weight moves by at most 2**-11 or 2**-13 of itself.
IDF_BITS = 11
COEF_BITS = 13
# Smaller coefficients become zero: their products would leave float32's normal
# range (1.2e-38), where it keeps fewer bits.
MIN_COEF = 1e-30


def round_weights(idf: np.ndarray, coef: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """idf (positive) and coef rounded to the grid the ONNX file stores exactly."""
    rounded = _significant(np.asarray(coef, dtype=np.float64), COEF_BITS)
    rounded[np.abs(rounded) < MIN_COEF] = 0.0
    return _significant(np.asarray(idf, dtype=np.float64), IDF_BITS), rounded


def _significant(values: np.ndarray, bits: int) -> np.ndarray:
    """values rounded to `bits` significant binary digits."""
    mantissa, exponent = np.frexp(values)
    rounded: np.ndarray = np.ldexp(np.round(np.ldexp(mantissa, bits)), exponent - bits)
    return rounded


def weight_table(idf: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """One head's table from idf [n] and coef [n_classes, n] (see WEIGHTS)."""
    idf = np.asarray(idf, dtype=np.float64)
    if not (np.isfinite(idf).all() and np.isfinite(coef).all()):
        raise ValueError("idf and coef must be finite (did training diverge?)")
    products = np.column_stack([idf * idf, np.asarray(coef, dtype=np.float64).T * idf[:, None]])
    table = products.astype(np.float32)
    if not np.array_equal(table, products):
        raise ValueError(
            "idf and coef must lie on the grid of weights.round_weights: float32 rounds their products"
        )
    return np.vstack([table, np.zeros((1, table.shape[1]), dtype=np.float32)])


def split_weight_table(weights: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(idf, coef) of each head back from WEIGHTS: exact, because the products were
    (a correctly rounded root or quotient that is representable is exact)."""
    if len(weights) % N_HEADS:
        raise ValueError(
            f"expected {N_HEADS} heads' tables, got {len(weights)} rows: a file from before the heads?"
        )
    heads = []
    for table in np.split(weights.astype(np.float64), N_HEADS):
        idf = np.sqrt(table[:-1, 0])
        heads.append((idf, (table[:-1, 1:] / idf[:, None]).T))
    return heads


def field_table(values: np.ndarray, field_coef: np.ndarray) -> np.ndarray:
    """One head's FIELD_WEIGHTS table from the tokens' values and field_coef [n_classes, tokens]."""
    coef = np.asarray(field_coef, dtype=np.float64)
    if not np.isfinite(coef).all():
        raise ValueError("field coefficients must be finite (did training diverge?)")
    if (coef[:, values == 0] != 0).any():
        raise ValueError("an unknown field token has a coefficient: it never occurs in training")
    table: np.ndarray = (coef * values).T
    return table


def read_heads(initializers: Mapping[str, np.ndarray], values: np.ndarray) -> List[HeadWeights]:
    """Each head's weights back from a file's initializers (WEIGHTS, INTERCEPT and
    FIELD_WEIGHTS), given the field tokens' values (FieldTokens.values_)."""
    tables = split_weight_table(initializers[WEIGHTS])
    intercepts = initializers[INTERCEPT]
    fields = np.split(initializers[FIELD_WEIGHTS], N_HEADS)
    if len(intercepts) != len(tables):
        raise ValueError(f"{len(tables)} weight tables but {len(intercepts)} intercept rows")
    scale = np.where(values == 0, 1.0, values)[:, None]
    return [
        HeadWeights(idf, coef, intercept, (field / scale).T)
        for (idf, coef), intercept, field in zip(tables, intercepts, fields)
    ]
