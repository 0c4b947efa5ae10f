"""Catalogue files for the batch scorer's tests, and what scoring them must give,
computed with onnxruntime directly (not through the code under test)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv

from batch.io import Input

# Rows whose title the scorer must skip: (title, why).
BLANK_TITLES = [("", "empty"), ("  \t ", "white space"), (None, "missing")]
# Text that a CSV writer must quote, and a NUL (onnxruntime would end the string there).
AWKWARD_TITLES = ['Caneca "Flork", azul', "Kit 10 sabonetes\nlembrancinha", "Body\x00bebê manga longa"]


def catalogue(products: List[Dict[str, str]], rows: int) -> pa.Table:
    """`rows` products of the public test file (its category dropped: OUTPUT adds one),
    every column as text, with blank and awkward titles and a few blank tags mixed in."""
    picked = [dict(products[i % len(products)]) for i in range(rows)]
    for row in picked:
        del row["category"]
    for i, (title, _) in enumerate(BLANK_TITLES):
        picked[7 + 31 * i]["title"] = title  # type: ignore[assignment]
    for i, title in enumerate(AWKWARD_TITLES):
        picked[13 + 29 * i]["title"] = title
    picked[3]["concatenated_tags"] = "   "  # blank tags are no tags
    picked[5]["concatenated_tags"] = None  # type: ignore[assignment]
    names = list(picked[0])
    return pa.table({name: pa.array([row[name] for row in picked], pa.string()) for name in names})


def typed(table: pa.Table) -> pa.Table:
    """The same rows with Parquet's types: numbers, a timestamp, a boolean, nulls."""

    def numbers(name: str, kind: pa.DataType) -> pa.Array:
        return pa.array([float(v) if v else None for v in table.column(name).to_pylist()]).cast(kind)

    dates = [datetime.datetime.fromisoformat(v) for v in table.column("creation_date").to_pylist()]
    return (
        table.set_column(
            table.schema.get_field_index("product_id"), "product_id", numbers("product_id", pa.int64())
        )
        .set_column(
            table.schema.get_field_index("order_counts"),
            "order_counts",
            numbers("order_counts", pa.float64()),
        )
        .set_column(
            table.schema.get_field_index("creation_date"),
            "creation_date",
            pa.array(dates, pa.timestamp("us")),
        )
        .append_column("express", pa.array([i % 3 == 0 for i in range(table.num_rows)]))
    )


def write_csv(table: pa.Table, path: Path) -> None:
    """Nulls become empty fields, as in any CSV."""
    pacsv.write_csv(table, str(path))


def as_csv_text(table: pa.Table) -> pa.Table:
    """What a CSV of `table` reads back as: a null was written as an empty field."""
    return pa.table(
        {name: pa.array([v or "" for v in table.column(name).to_pylist()]) for name in table.column_names}
    )


def read(path: Path) -> pa.Table:
    """A file or a directory of parts, in order, with the scorer's own reader."""
    return pa.Table.from_batches(list(Input(str(path)).batches()))


def expected(model_path: str, table: pa.Table) -> Tuple[List[str], List[Optional[float]]]:
    """Category and confidence of every row, by onnxruntime run directly: "" and None
    where the title is missing or blank; blank tags are none, a NUL is the space it folds to."""
    titles = table.column("title").to_pylist()
    tags = table.column("concatenated_tags").to_pylist()
    scored = [i for i, t in enumerate(titles) if t and not t.isspace()]
    feeds = {
        "title": np.array([titles[i].replace("\x00", " ") for i in scored], dtype=object),
        "concatenated_tags": np.array(
            ["" if not tags[i] or tags[i].isspace() else tags[i] for i in scored], dtype=object
        ),
    }
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], feeds)
    categories: List[str] = [""] * len(titles)
    confidences: List[Optional[float]] = [None] * len(titles)
    for k, i in enumerate(scored):
        categories[i] = str(labels[k])
        confidences[i] = float(probabilities[k].max())
    return categories, confidences


def assert_scored(model_path: str, source: pa.Table, got: pa.Table) -> None:
    """`got` is `source`, every column and row in place, plus the expected scores."""
    assert got.column_names == [*source.column_names, "category", "confidence"]
    for name in source.column_names:
        assert got.column(name).to_pylist() == source.column(name).to_pylist(), name
    categories, confidences = expected(model_path, source)
    assert got.column("category").to_pylist() == categories
    # A CSV's confidence reads back as text, and no confidence as "".
    conf = [None if c in (None, "") else float(c) for c in got.column("confidence").to_pylist()]
    assert [c is None for c in conf] == [c is None for c in confidences]
    np.testing.assert_allclose(
        [c for c in conf if c is not None], [c for c in confidences if c is not None], rtol=0, atol=1e-5
    )
    assert len(set(categories) - {""}) > 1, "one category for all rows: the order check would be vacuous"
