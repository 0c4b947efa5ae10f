"""A record batch of products in, a category and a confidence per row out: the scoring
of both engines, through the service's wrapper (runtime.categorizer).

A row's text reaches the model as the service would send it: a title that is missing or
blank is not scored (empty category, no confidence) and is counted; missing or blank
tags, and any other text input, are "" (none). The listing fields (seller_id, price, ...)
are converted column at a time by batch.fields; their invalid values are unknown to the
model, and counted.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from batch import fields
from batch.job import JobError, one_line
from runtime.categorizer import INPUT_TITLE, LISTING_FIELDS, Categorizer, Column

CATEGORY = "category"
CONFIDENCE = "confidence"
# Rows per onnxruntime run, as the in-process ceiling measures it (bench/ceiling.py).
SUB_BATCH_ROWS = 1024

_model: Optional[Tuple[str, Categorizer]] = None  # this process's model, and its path


class Scored(NamedTuple):
    category: pa.Array  # string: the label, "" where the title is blank
    confidence: pa.Array  # float32: the label's probability, null where the title is blank
    blank: List[int]  # positions of the rows with a missing or blank title
    invalid: Dict[str, List[int]]  # a listing field's column -> positions of its invalid values


def check_columns(names: Sequence[str], path: str) -> None:
    """INPUT must have a title and must not have the columns OUTPUT adds."""
    if INPUT_TITLE not in names:
        raise JobError(f"INPUT {path} has no {INPUT_TITLE!r} column (its columns: {', '.join(names)})")
    for name in (CATEGORY, CONFIDENCE):
        if name in names:
            raise JobError(
                f"INPUT {path} already has a {name!r} column, which OUTPUT adds; rename or drop it first"
            )


def model_columns(names: Sequence[str], model_inputs: Sequence[str], path: str) -> List[str]:
    """INPUT's columns that the model takes (title, tags, ...), in INPUT's order; a
    JobError if one of them is there twice (which of the two would it read?)."""
    taken = [name for name in names if name in model_inputs]
    for name in taken:
        if taken.count(name) > 1:
            raise JobError(
                f"INPUT {path} has {taken.count(name)} columns named {name!r}; the model reads one"
            )
    return taken


def model_for(path: str) -> Categorizer:
    """This process's model, loaded on first use: one session per scoring process. A
    process that scores with another model (a Spark worker reused by the next job, a
    test's in-process runs) loads that one in its place."""
    global _model
    if _model is None or _model[0] != path:
        _model = (path, Categorizer.load(path))
    return _model[1]


def output_schema(schema: pa.Schema) -> pa.Schema:
    """INPUT's columns, then category and confidence (its file-level metadata dropped:
    pandas' would describe the input's columns only)."""
    fields = [*schema, pa.field(CATEGORY, pa.string()), pa.field(CONFIDENCE, pa.float32())]
    return pa.schema(fields)


def with_scores(batch: pa.RecordBatch, scored: Scored, schema: pa.Schema) -> pa.RecordBatch:
    """The input rows, untouched, with their two new columns."""
    return pa.RecordBatch.from_arrays([*batch.columns, scored.category, scored.confidence], schema=schema)


def score(model: Categorizer, inputs: pa.RecordBatch) -> Scored:
    """Scores the rows of `inputs` (the model's columns of a batch, title among them)."""
    texts, blank = _model_texts(inputs)
    listing = listing_fields(inputs)
    kept = [i for i, title in enumerate(texts[INPUT_TITLE]) if not _blank(title)]
    # Sub-batches of rows of similar length: the graph pads every string to the longest.
    kept.sort(key=lambda i: sum(len(column[i]) for column in texts.values()))
    categories = [""] * inputs.num_rows
    confidences = np.zeros(inputs.num_rows, dtype=np.float32)
    for start in range(0, len(kept), SUB_BATCH_ROWS):
        rows = kept[start : start + SUB_BATCH_ROWS]
        columns: Dict[str, Column] = {name: [column[i] for i in rows] for name, column in texts.items()}
        columns.update({name: field.values[rows] for name, field in listing.items()})
        labels, probabilities = model.predict_with_probabilities(columns)
        for i, label in zip(rows, labels):
            categories[i] = label
        confidences[rows] = probabilities.max(axis=1)
    missing = np.zeros(inputs.num_rows, dtype=bool)
    missing[blank] = True
    invalid = {name: np.flatnonzero(field.invalid).tolist() for name, field in listing.items()}
    return Scored(pa.array(categories, pa.string()), pa.array(confidences, mask=missing), blank, invalid)


def listing_fields(inputs: pa.RecordBatch) -> Dict[str, fields.Converted]:
    """The listing fields among `inputs`' columns, converted (batch.fields)."""
    return {
        name: fields.convert(name, inputs.column(name))
        for name in inputs.schema.names
        if name in LISTING_FIELDS
    }


def _model_texts(inputs: pa.RecordBatch) -> Tuple[Dict[str, List[str]], List[int]]:
    """Each text column but the listing fields as the model takes it ("" for none), and
    the rows without a title. The service's rule for tags, and for any other text input:
    missing or blank is none."""
    names = [name for name in inputs.schema.names if name not in LISTING_FIELDS]
    columns = {name: _texts(inputs.column(name), name) for name in names}
    texts = {
        name: ["" if _blank(text) else text or "" for text in column] for name, column in columns.items()
    }
    return texts, blank_rows(columns[INPUT_TITLE])


def _blank(text: Optional[str]) -> bool:
    return not text or text.isspace()


def blank_rows(titles: Sequence[Optional[str]]) -> List[int]:
    """Positions of the titles that are missing, empty or white space: not scored."""
    return [i for i, title in enumerate(titles) if _blank(title)]


def blank_in(titles: pa.Array) -> List[int]:
    """blank_rows of a title column."""
    return blank_rows(_texts(titles, INPUT_TITLE))


def _texts(column: pa.Array, name: str) -> List[Optional[str]]:
    """A column as Python strings; numbers and dictionary-encoded text are cast to text."""
    try:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            column = column.cast(pa.string())
        texts: List[Optional[str]] = column.to_pylist()
    # Casting binary validates UTF-8 (ArrowInvalid); Parquet text is decoded only here.
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
        raise JobError(f"column {name!r} is not text: {one_line(exc)}") from None
    return texts
