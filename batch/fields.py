"""The listing fields of issue 13 (seller_id, price, weight, minimum_quantity,
express_delivery) as the model takes them, from whatever a CSV or Parquet file holds.

Column at a time, with pyarrow compute and numpy: no Python per row. Each column gives
its values, unknown where the file has none ("" for the seller, NaN for the numbers),
and the rows whose value is invalid, which are then unknown too (the engines count them,
and --strict refuses them):

- seller_id: text, numbers or Parquet's integers; white space trimmed; a number written
  with a zero fraction (9835835.0: an integer column with gaps, as pandas writes it) is
  the integer's text, "9835835". Invalid: longer than 64 characters (white space
  included, as the API counts), or a float that is not finite. A column of booleans is
  refused, as the API refuses true and false.
- price, weight, minimum_quantity: numbers, or text a number is written in (1e3, .5, +2;
  not 1,5 or R$ 10). Invalid: below 0, above 1,000,000 or infinite (the API's bounds), or
  text that is not a number.
- express_delivery: booleans, 0/1, or the text true/false/0/1 (any case). Invalid:
  anything else (2, 0.5, "yes").

Missing in every column: a null, an empty or blank field, or the text nan, na, n/a, null
or none (any case), as pandas reads and writes a CSV.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.job import JobError, one_line
from runtime.categorizer import INPUT_EXPRESS_DELIVERY, INPUT_SELLER

# The HTTP API's bounds (issue 13): the same file scored either way refuses the same values.
MAX_NUMBER = 1_000_000.0
MAX_SELLER_CHARS = 64
# What a valid value looks like, for --strict's message.
RULES = {
    INPUT_SELLER: f"at most {MAX_SELLER_CHARS} characters",
    INPUT_EXPRESS_DELIVERY: "true, false, 0 or 1",
}
NUMBER_RULE = f"a number from 0 to {MAX_NUMBER:,.0f}"
# Text that means "no value": what pandas writes for NaN or None, and reads as missing.
MISSING_WORDS = ["", "nan", "na", "n/a", "null", "none"]
# What Arrow's text-to-float cast parses, and nothing more (it fails a whole array on
# one bad value, so only the text that matches is cast). RE2's \d is ASCII only.
NUMBER_TEXT = r"^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)$"
# An integer written with a zero fraction, as a float column writes it: "9835835.0".
ZERO_FRACTION = r"^([+-]?\d+)\.0*$"


class Converted(NamedTuple):
    values: np.ndarray  # float32 (NaN: unknown), or str objects for the seller ("": unknown)
    invalid: np.ndarray  # bool, a row's value is invalid (and is unknown in `values`)


def rule(name: str) -> str:
    """What a valid value of the column looks like."""
    return RULES.get(name, NUMBER_RULE)


def convert(name: str, column: pa.Array) -> Converted:
    """One listing field's column as the model takes it."""
    column = _decoded(column)
    if name == INPUT_SELLER:
        return _seller_ids(column)
    if name == INPUT_EXPRESS_DELIVERY:
        return _flags(name, column)
    return _amounts(name, column)


def _seller_ids(column: pa.Array) -> Converted:
    if pa.types.is_boolean(column.type):  # the API refuses true and false as ids too
        raise JobError(f"column {INPUT_SELLER!r} holds bool: true and false are not seller ids")
    if not (_is_text(column.type) or _is_number(column.type) or pa.types.is_null(column.type)):
        raise JobError(f"column {INPUT_SELLER!r} holds {column.type}, neither numbers nor text")
    invalid = np.zeros(len(column), dtype=bool)
    if pa.types.is_floating(column.type):
        # A float id is an integer column with gaps: NaN is a gap; infinity is no id.
        invalid = _filled(pc.is_inf(column), False)
        column = pc.if_else(pc.is_finite(column), column, pa.nulls(len(column), column.type))
        column = _whole_as_digits(column)
    text = _as_text(column, INPUT_SELLER)
    # Counted before trimming, as the API counts a string's characters as sent.
    long = _filled(pc.greater(pc.utf8_length(text), MAX_SELLER_CHARS), False)
    text = pc.replace_substring_regex(_known(text), ZERO_FRACTION, r"\1")
    invalid |= long
    text = pc.if_else(pa.array(long), "", pc.fill_null(text, ""))
    return Converted(text.to_numpy(zero_copy_only=False), invalid)


def _whole_as_digits(column: pa.Array) -> pa.Array:
    """A float column of ids as text, each whole id as its integer's digits, so that
    10000000001.0 reads "10000000001" (Arrow writes large floats as "1.0000000001e+10").
    Decided id by id: a row's id must not depend on the other rows of its batch."""
    whole = pc.fill_null(pc.and_(pc.equal(pc.floor(column), column), pc.less(pc.abs(column), 2.0**63)), False)
    digits = pc.cast(
        pc.cast(pc.if_else(whole, column, pa.nulls(len(column), column.type)), pa.int64()), pa.string()
    )
    return pc.if_else(whole, digits, pc.cast(column, pa.string()))


def _amounts(name: str, column: pa.Array) -> Converted:
    values, unparsed = _numbers(name, column)
    with np.errstate(invalid="ignore"):  # NaN compares false: unknown is not invalid
        invalid = unparsed | np.isinf(values) | (values < 0) | (values > MAX_NUMBER)
    values[invalid] = np.nan
    return Converted(values.astype(np.float32), invalid)


def _flags(name: str, column: pa.Array) -> Converted:
    if _is_text(column.type):
        words = pc.utf8_lower(_known(_as_text(column, name)))
        column = pc.if_else(pc.equal(words, "true"), "1", pc.if_else(pc.equal(words, "false"), "0", words))
    values, unparsed = _numbers(name, column)
    invalid = unparsed | ~(np.isnan(values) | (values == 0) | (values == 1))
    values[invalid] = np.nan
    return Converted(values.astype(np.float32), invalid)


def _numbers(name: str, column: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where missing or not a number), and where text is not a number."""
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan), np.zeros(len(column), dtype=bool)
    if _is_text(column.type):
        text = _known(_as_text(column, name))
        parsed = _filled(pc.match_substring_regex(text, NUMBER_TEXT, ignore_case=True), True)
        unparsed = ~parsed
        column = pc.if_else(pa.array(parsed), text, pa.nulls(len(text), pa.string()))
    elif _is_number(column.type):
        unparsed = np.zeros(len(column), dtype=bool)
    else:
        raise JobError(f"column {name!r} holds {column.type}, neither numbers nor text")
    values = pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.float64), unparsed  # a copy the caller may write to


def _known(text: pa.Array) -> pa.Array:
    """Text trimmed, with the words for "no value" as nulls."""
    trimmed = pc.utf8_trim_whitespace(text)
    missing = pc.is_in(pc.utf8_lower(trimmed), pa.array(MISSING_WORDS))
    return pc.if_else(missing, pa.nulls(len(trimmed), pa.string()), trimmed)


def _as_text(column: pa.Array, name: str) -> pa.Array:
    try:
        return column if pa.types.is_string(column.type) else column.cast(pa.string())
    # Casting binary validates UTF-8; Parquet text without its annotation is binary.
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise JobError(f"column {name!r} is not text: {one_line(exc)}") from None


def _decoded(column: pa.Array) -> pa.Array:
    # Parquet written from a pandas category comes back dictionary-encoded.
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _filled(mask: pa.Array, missing: bool) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as `missing`."""
    return np.asarray(pc.fill_null(mask, missing).to_numpy(zero_copy_only=False), dtype=bool)


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _is_number(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
    )
