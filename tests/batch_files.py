"""Catalogue files for the batch scorer's tests, and what scoring them must give,
computed with onnxruntime directly (not through the code under test)."""

from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
from onnx import TensorProto, helper

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
    where the title is missing or blank; blank tags are none, a NUL is the space it folds to;
    the listing fields the model takes as `listing_value` reads them, unknown when absent."""
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
    for given in session.get_inputs():
        if given.name in LISTING_KINDS:
            values = table.column(given.name).to_pylist() if given.name in table.column_names else []
            feeds[given.name] = listing_feed(given.name, [values[i] if values else None for i in scored])
    labels, probabilities = session.run(["label", "probabilities"], feeds)
    categories: List[str] = [""] * len(titles)
    confidences: List[Optional[float]] = [None] * len(titles)
    for k, i in enumerate(scored):
        categories[i] = str(labels[k])
        confidences[i] = float(probabilities[k].max())
    return categories, confidences


def _values(column: pa.ChunkedArray) -> List[Any]:
    """A column's values, NaN as "NaN" (which equals itself)."""
    return ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in column.to_pylist()]


def assert_scored(model_path: str, source: pa.Table, got: pa.Table) -> None:
    """`got` is `source`, every column and row in place, plus the expected scores."""
    assert got.column_names == [*source.column_names, "category", "confidence"]
    for name in source.column_names:
        assert _values(got.column(name)) == _values(source.column(name)), name
    categories, confidences = expected(model_path, source)
    assert got.column("category").to_pylist() == categories
    # A CSV's confidence reads back as text, and no confidence as "".
    conf = [None if c in (None, "") else float(c) for c in got.column("confidence").to_pylist()]
    assert [c is None for c in conf] == [c is None for c in confidences]
    np.testing.assert_allclose(
        [c for c in conf if c is not None], [c for c in confidences if c is not None], rtol=0, atol=1e-5
    )
    assert len(set(categories) - {""}) > 1, "one category for all rows: the order check would be vacuous"


# The listing fields, each with the kind of value the model takes.
LISTING_KINDS = {
    "seller_id": "seller",
    "price": "amount",
    "weight": "amount",
    "minimum_quantity": "amount",
    "express_delivery": "flag",
}
# The values README's "Scoring a catalogue" promises to read as missing, and as invalid.
MISSING_TEXT = {"", "nan", "na", "n/a", "null", "none"}


def listing_value(name: str, value: Any) -> Tuple[Any, bool]:
    """One value of a listing field as the model takes it, and whether it is invalid: a
    row at a time, written from README's rules independently of batch/fields.py."""
    if LISTING_KINDS[name] == "seller":
        return _seller(value)
    number = _number(value)
    if number is None:
        return math.nan, value is not None and not _missing(value)
    if math.isnan(number):
        return math.nan, False
    ok = number in (0.0, 1.0) if LISTING_KINDS[name] == "flag" else 0 <= number <= 1_000_000
    return (number, False) if ok else (math.nan, True)


def listing_feed(name: str, values: List[Any]) -> np.ndarray:
    converted = [listing_value(name, v)[0] for v in values]
    if LISTING_KINDS[name] == "seller":
        return np.array(converted, dtype=object)
    return np.array(converted, dtype=np.float32)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING_TEXT)


def _seller(value: Any) -> Tuple[str, bool]:
    if isinstance(value, float):
        if math.isinf(value):
            return "", True
        value = None if math.isnan(value) else int(value) if value.is_integer() else value
    if len(str(value)) > 64:  # as sent, white space included
        return "", True
    if _missing(value):
        return "", False
    text = str(value).strip()
    if re.fullmatch(r"[+-]?[0-9]+\.0*", text):
        text = text.split(".")[0]
    return text, False


def _number(value: Any) -> Optional[float]:
    """None where there is no number (missing, or text that is not one)."""
    if _missing(value):
        return None
    if not isinstance(value, str):
        return float(value)
    text = value.strip().lower()
    text = {"true": "1", "false": "0"}.get(text, text)
    if "_" in text:  # Python's float() takes 1_000; no file writes a number so
        return None
    try:
        return float(text)
    except ValueError:
        return None


# Listing field values every rule of README's applies to, as a CSV holds them (text),
# for the rows of `with_fields`: (column, value, invalid).
FIELD_CASES = [
    ("seller_id", "9835835.0", False),
    ("seller_id", " 42 ", False),
    ("seller_id", "", False),
    ("seller_id", "NaN", False),
    ("seller_id", "s" * 64, False),
    ("seller_id", "s" * 65, True),
    ("seller_id", " " + "s" * 64, True),
    ("price", "-3", True),
    ("price", "1000001", True),
    ("price", "inf", True),
    ("price", "R$ 10", True),
    ("price", "1,5", True),
    ("price", " 1e3 ", False),
    ("price", "1000000", False),
    ("price", "", False),
    ("weight", "null", False),
    ("weight", "-0.5", True),
    ("minimum_quantity", ".5", False),
    ("minimum_quantity", "ten", True),
    ("express_delivery", "true", False),
    ("express_delivery", "FALSE", False),
    ("express_delivery", "1.0", False),
    ("express_delivery", "yes", True),
    ("express_delivery", "2", True),
    ("express_delivery", "", False),
]


def with_fields(table: pa.Table) -> pa.Table:
    """`table` (text, with the public file's listing fields) with each of FIELD_CASES in
    a row of its own, from row 40 on, every 11th."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for k, (name, value, _) in enumerate(FIELD_CASES):
        columns[name][40 + 11 * k] = value
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def typed_fields(table: pa.Table) -> pa.Table:
    """The listing fields of `table` with Parquet's types, as pandas would write them: a
    seller id as a float with gaps, numbers as floats (NaN, a negative, an infinity),
    minimum_quantity as int64, express_delivery as booleans."""

    def floats(name: str) -> List[Optional[float]]:
        return [float(v) if v else None for v in table.column(name).to_pylist()]

    sellers, prices, weights = floats("seller_id"), floats("price"), floats("weight")
    sellers[2], sellers[4] = None, math.inf
    prices[6], prices[8], prices[10] = math.nan, -1.0, 2_000_000.0
    weights[12] = math.inf
    express = [
        None if i % 10 == 9 else v == "1" for i, v in enumerate(table.column("express_delivery").to_pylist())
    ]
    return (
        table.set_column(
            table.schema.get_field_index("seller_id"), "seller_id", pa.array(sellers, pa.float64())
        )
        .set_column(table.schema.get_field_index("price"), "price", pa.array(prices, pa.float64()))
        .set_column(table.schema.get_field_index("weight"), "weight", pa.array(weights, pa.float64()))
        .set_column(
            table.schema.get_field_index("minimum_quantity"),
            "minimum_quantity",
            pa.array([int(v) for v in table.column("minimum_quantity").to_pylist()], pa.int64()),
        )
        .set_column(
            table.schema.get_field_index("express_delivery"),
            "express_delivery",
            pa.array(express, pa.bool_()),
        )
    )


def invalid_counts(table: pa.Table) -> Dict[str, int]:
    """Each listing field's invalid values in `table`, by listing_value (0 for a field
    without any: the engines' summaries name each field they read)."""
    return {
        name: sum(listing_value(name, v)[1] for v in table.column(name).to_pylist())
        for name in LISTING_KINDS
        if name in table.column_names
    }


def echo_model(path: Path, listing: bool = True) -> str:
    """A model that takes title, tags and the five listing fields and answers, as the
    label of each product, what it was given: "title|tags|seller|price|weight|minimum|
    express" (numbers as onnxruntime writes a float32, NaN for unknown). Its probabilities:
    one column, 1 where the price is unknown. A category then shows which values reached
    which row; scored through runtime.categorizer, like the real model. With listing
    False it takes title and tags only, like a model from before the fields, answers
    "title|tags" and its probability column is all 0."""
    strings = ["title", "concatenated_tags", "seller_id"] if listing else ["title", "concatenated_tags"]
    numbers = ["price", "weight", "minimum_quantity", "express_delivery"] if listing else []
    inputs = [helper.make_tensor_value_info(n, TensorProto.STRING, ["N"]) for n in strings]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in numbers]
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["bar"],
            value=helper.make_tensor("bar", TensorProto.STRING, [], np.array([b"|"], dtype=object)),
        )
    ]
    nodes += [helper.make_node("Cast", [n], [f"{n}_text"], to=TensorProto.STRING) for n in numbers]
    said = "title"
    for k, part in enumerate([*strings[1:], *(f"{n}_text" for n in numbers)]):
        nodes.append(helper.make_node("StringConcat", [said, "bar"], [f"said{k}_bar"]))
        nodes.append(helper.make_node("StringConcat", [f"said{k}_bar", part], [f"said{k}"]))
        said = f"said{k}"
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    nodes += [
        helper.make_node("Identity", [said], ["label"]),
        helper.make_node("IsNaN", ["price"] if listing else ["zero"], ["no_price"]),
        helper.make_node("Cast", ["no_price"], ["no_price_float"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["axis"], value=axis),
        helper.make_node("Unsqueeze", ["no_price_float", "axis"], ["probabilities"]),
    ]
    if not listing:  # a float column of 0s, one per title, for the probabilities
        nodes += [
            helper.make_node("Shape", ["title"], ["rows"]),
            helper.make_node("ConstantOfShape", ["rows"], ["zero"]),
        ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "echo", inputs, outputs), opset_imports=[helper.make_opsetid("", 20)]
    )
    model.ir_version = 9  # onnxruntime 1.19 reads up to 10
    # The runtime checks at load that its warm-up product's answer is one of the labels.
    warm_up = "Warm-up título de produto|||NaN|NaN|NaN|NaN" if listing else "Warm-up título de produto|"
    helper.set_model_props(model, {"labels": json.dumps([warm_up])})
    onnx.save(model, str(path))
    return str(path)
