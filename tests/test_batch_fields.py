"""batch/fields.py: each listing field's conversions from CSV text and Parquet's types,
and each rule of what is invalid."""

from __future__ import annotations

import datetime
import decimal
import math
from typing import Any, List

import numpy as np
import pyarrow as pa
import pytest

from batch import fields
from batch.job import JobError
from batch.report import Summary
from tests.batch_files import FIELD_CASES, listing_value


def converted(name: str, column: pa.Array) -> List[Any]:
    """The values as the model gets them, None where invalid (an invalid value is unknown)."""
    result = fields.convert(name, column)
    assert len(result.values) == len(result.invalid) == len(column)
    values = [None if bad else v for v, bad in zip(result.values.tolist(), result.invalid)]
    return [("nan" if isinstance(v, float) and math.isnan(v) else v) for v in values]


@pytest.mark.parametrize(
    ("column", "want"),
    [
        (pa.array([9835835, None, 7], pa.int64()), ["9835835", "", "7"]),  # Parquet's integers
        (pa.array([9835835.0, None, math.nan, 2.5]), ["9835835", "", "", "2.5"]),  # an int column with gaps
        (
            pa.array([" 9835835.0 ", "", "  ", "007", "NaN", "None", "abc"]),
            ["9835835", "", "", "007", "", "", "abc"],
        ),
        (pa.array(["1", "2", "1"]).dictionary_encode(), ["1", "2", "1"]),  # a pandas category
        (pa.array([b"42", None], pa.binary()), ["42", ""]),  # Parquet text without its annotation
        (pa.array([decimal.Decimal("42.00")]), ["42"]),
        (pa.nulls(2), ["", ""]),
        (pa.array(["s" * 64, "s" * 65, "é" * 64]), ["s" * 64, None, "é" * 64]),  # characters, not bytes
        (pa.array([math.inf, -math.inf]), [None, None]),
        # Whole floats as digits, as training reads them (Arrow writes 1.0000000001e+10).
        (pa.array([10000000001.0, None, 1e15]), ["10000000001", "", "1000000000000000"]),
        # Id by id: one id that is not whole leaves its neighbours' digits as they are.
        (pa.array([10000000001.0, 2.5]), ["10000000001", "2.5"]),
    ],
)
def test_seller_ids(column: pa.Array, want: List[Any]) -> None:
    assert converted("seller_id", column) == want


@pytest.mark.parametrize("name", ["price", "weight", "minimum_quantity"])
@pytest.mark.parametrize(
    ("column", "want"),
    [
        (
            pa.array([" 73.5", "1e3", ".5", "+2", "5.", "0", "1000000"]),
            [73.5, 1000.0, 0.5, 2.0, 5.0, 0.0, 1e6],
        ),
        (pa.array(["", " ", "nan", "NA", "n/a", "null", "None", None]), ["nan"] * 8),
        (pa.array(["-1", "1000000.5", "inf", "-Infinity", "1e400"]), [None] * 5),
        (pa.array(["R$ 10", "1,5", "ten", "0x10", "1_000", "٣"]), [None] * 6),
        (pa.array([3, -3, None], pa.int64()), [3.0, None, "nan"]),
        (pa.array([2.5, math.nan, None, -0.1, math.inf, 2e6]), [2.5, "nan", "nan", None, None, None]),
        (pa.array([True, False]), [1.0, 0.0]),
        (pa.array([decimal.Decimal("12.34")]), [pytest.approx(12.34)]),
        (pa.nulls(1), ["nan"]),
    ],
)
def test_amounts(name: str, column: pa.Array, want: List[Any]) -> None:
    assert converted(name, column) == want


@pytest.mark.parametrize(
    ("column", "want"),
    [
        (pa.array([True, False, None]), [1.0, 0.0, "nan"]),
        (pa.array([1, 0, 2, -1, None], pa.int64()), [1.0, 0.0, None, None, "nan"]),
        (pa.array([1.0, 0.0, 0.5, math.nan]), [1.0, 0.0, None, "nan"]),
        (pa.array(["true", "FALSE", " True ", "1", "0", "1.0", ""]), [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, "nan"]),
        (pa.array(["yes", "no", "sim", "2", "t"]), [None] * 5),
    ],
)
def test_express_delivery(column: pa.Array, want: List[Any]) -> None:
    assert converted("express_delivery", column) == want


def test_numbers_reach_the_model_as_float32() -> None:
    got = fields.convert("price", pa.array(["73.920006", "1"]))
    assert got.values.dtype == np.float32
    assert got.values[0] == np.float32(73.920006)


@pytest.mark.parametrize(("name", "value", "invalid"), FIELD_CASES)
def test_the_tests_reference_reads_each_case_as_the_scorer(name: str, value: str, invalid: bool) -> None:
    # tests/batch_files.listing_value computes the expected feeds of the engine tests.
    want, refused = listing_value(name, value)
    assert refused == invalid
    got = fields.convert(name, pa.array([value]))
    assert bool(got.invalid[0]) == invalid
    if isinstance(want, str):
        assert got.values[0] == want
    else:
        np.testing.assert_equal(got.values[0], np.float32(want))


@pytest.mark.parametrize("name", ["seller_id", "price", "express_delivery"])
def test_a_column_of_another_type_fails_with_its_name(name: str) -> None:
    column = pa.array([datetime.datetime(2026, 11, 29)], pa.timestamp("us"))
    with pytest.raises(JobError, match=f"column '{name}' holds timestamp"):
        fields.convert(name, column)


def test_a_column_of_booleans_is_no_seller_id() -> None:
    with pytest.raises(JobError, match="column 'seller_id' holds bool: true and false are not seller ids"):
        fields.convert("seller_id", pa.array([True, False]))


def test_text_that_is_not_utf8_fails_with_its_name() -> None:
    with pytest.raises(JobError, match="column 'price' is not text"):
        fields.convert("price", pa.array([b"1\xff"], pa.binary()))


def test_the_summary_counts_invalid_values_by_column() -> None:
    summary = Summary(rows=10, skipped=1, seconds=1.0)
    assert "invalid" not in summary.line("out.csv")
    summary.count_invalid("price", 2)
    summary.count_invalid("seller_id", 0)
    summary.count_invalid("price", 1)
    assert summary.line("out.csv") == (
        "scored 10 rows in 1.0 s (10 rows/s), 1 skipped (blank title), "
        "invalid values read as unknown: 3 price; wrote out.csv"
    )
