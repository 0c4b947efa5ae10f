"""The ONNX realisation of :class:`~categorizer.features.FeatureSpec`, plus the
linear model on top of it.

Raw strings in, label and probabilities out. Everything is kept *flat*: the
characters of all rows form one 1-D tensor with a parallel tensor of row ids,
so no step costs more than linear time in the batch's characters (a dense
``[N, n_features]`` tensor, or a pairwise ``[T, T]`` comparison, would not).

Pipeline: title + " " + tags -> Tokenizer (character mode) -> fold table
(LabelEncoder) -> flatten, drop pads and deleted marks, collapse runs of
spaces -> character n-grams by chained StringConcat; words by doubling
concatenations inside each word -> word n-grams -> MurmurHash3 -> bucket ->
exact per-row counts of repeated buckets (sort) -> sublinear tf x idf -> l2
norm -> gather coefficient rows -> scatter-add per row -> one-vs-rest
sigmoids normalised by their sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from categorizer.features import WORD_PREFIX, FeatureSpec

# StringConcat first appears in opset 20; onnxruntime 1.19 (the last release for
# Python 3.9) refuses opset 22+ and IR versions above 10.
OPSET = 20
IR_VERSION = 9
ML_OPSET = 3  # LabelEncoder with string keys and values
MS_OPSET = 1  # com.microsoft: Tokenizer, MurmurHash3

# LabelEncoder answers this for characters outside the fold table; it cannot be
# a real one-character fold because it is two characters long.
_UNFOLDED = "\x00\x00"
_INT64_MAX = np.iinfo(np.int64).max
# Longest shift any step takes: n-gram orders and word doubling widths stay below it.
_MAX_SHIFT = 64

# Initializer names of the learned weights. WEIGHTS is [n_features, 1 + n_classes]
# float32: column 0 is the bucket's idf, the others its coefficients, so one
# gather (one cache miss per bucket) fetches all a bucket needs.
WEIGHTS = "weights"
INTERCEPT = "intercept"


@dataclass
class _Builder:
    """Accumulates nodes and initializers, handing out unique tensor names."""

    nodes: List[onnx.NodeProto] = field(default_factory=list)
    inits: List[onnx.TensorProto] = field(default_factory=list)
    # (tensor, fill) -> (tensor + _MAX_SHIFT fills, its original shape), see _shift.
    padded: Dict[Tuple[str, str], Tuple[str, str]] = field(default_factory=dict)
    _count: int = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], domain: str = "", **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: Any) -> List[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer under a fixed name, so readers can find the weights."""
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, value: object, hint: str = "c", dtype: Optional[type] = None) -> str:
        name = self.name(hint)
        array: np.ndarray = np.array(value, dtype=dtype if dtype is not None else _dtype_of(value))
        self.inits.append(numpy_helper.from_array(array, name))
        return name


def _dtype_of(value: object) -> type:
    kind = np.asarray(value).dtype.kind
    return {"U": object, "b": np.bool_, "i": np.int64}.get(kind, np.float64)


@dataclass(frozen=True)
class _Flat:
    """A flat string tensor and the batch row each element belongs to."""

    values: str
    rows: str


# --- small graph idioms --------------------------------------------------------


def _shift(b: _Builder, x: str, k: int, fill: object) -> str:
    """x[i + k], with `fill` past the end; same length as x even when len < k.

    Every shift of one tensor slices a single padded copy of it, so n-gram
    orders 2..5 cost one copy each rather than two.
    """
    if k > _MAX_SHIFT:
        raise ValueError(f"shift {k} exceeds {_MAX_SHIFT}")
    key = (x, repr(fill))
    if key not in b.padded:
        pad = b.op("Expand", [b.const([fill]), b.const([_MAX_SHIFT])])
        b.padded[key] = (b.op("Concat", [x, pad], axis=0), b.op("Shape", [x]))
    padded, length = b.padded[key]
    return b.op("Slice", [padded, b.const([k]), b.op("Add", [length, b.const([k])]), b.const([0])])


def _compress(b: _Builder, flat: _Flat, keep: str) -> _Flat:
    return _Flat(
        b.op("Compress", [flat.values, keep], axis=0),
        b.op("Compress", [flat.rows, keep], axis=0),
    )


def _same_row_ahead(b: _Builder, rows: str, k: int) -> str:
    return b.op("Equal", [_shift(b, rows, k, -1), rows])


# --- text -> flat normalised streams ------------------------------------------


def _fold(b: _Builder, chars: str, fold: Dict[str, str]) -> str:
    keys = sorted(fold)
    mapped = b.op(
        "LabelEncoder",
        [chars],
        domain="ai.onnx.ml",
        keys_strings=keys,
        values_strings=[fold[k] for k in keys],
        default_string=_UNFOLDED,
    )
    unfolded = b.op("Equal", [mapped, b.const(_UNFOLDED)])
    return b.op("Where", [unfolded, chars, mapped])


def _stream(b: _Builder, text: str, fold: Dict[str, str]) -> _Flat:
    """Flat ' w1 w2 ... ' streams: every row starts and ends with one space."""
    # separators=[""] is the Tokenizer's character mode; rows are padded with "".
    chars = b.op(
        "Tokenizer", [text], domain="com.microsoft", mark=0, mincharnum=1, pad_value="", separators=[""]
    )
    folded = _fold(b, chars, fold)
    n_rows = b.op("Slice", [b.op("Shape", [text]), b.const([0]), b.const([1])])
    edge = b.op("Expand", [b.const([[" "]]), b.op("Concat", [n_rows, b.const([1])], axis=0)])
    framed = b.op("Concat", [edge, folded, edge], axis=1)
    row_ids = b.op("Range", [b.const(0), b.op("Squeeze", [n_rows]), b.const(1)])
    grid_rows = b.op("Expand", [b.op("Unsqueeze", [row_ids, b.const([1])]), b.op("Shape", [framed])])
    flat = _Flat(b.op("Reshape", [framed, b.const([-1])]), b.op("Reshape", [grid_rows, b.const([-1])]))
    flat = _compress(b, flat, b.op("Not", [b.op("Equal", [flat.values, b.const("")])]))
    return _collapse_spaces(b, flat)


def _collapse_spaces(b: _Builder, flat: _Flat) -> _Flat:
    space = b.op("Equal", [flat.values, b.const(" ")])
    prev_space = _shift_back(b, space, False)
    prev_same_row = b.op("Equal", [_shift_back(b, flat.rows, -1), flat.rows])
    repeated = b.op("And", [space, b.op("And", [prev_space, prev_same_row])])
    return _compress(b, flat, b.op("Not", [repeated]))


def _shift_back(b: _Builder, x: str, fill: object) -> str:
    """x[i - 1], with `fill` at position 0."""
    joined = b.op("Concat", [b.const([fill]), x], axis=0)
    return b.op("Slice", [joined, b.const([0]), b.const([-1]), b.const([0])])


# --- streams -> feature names ---------------------------------------------------


def _char_ngrams(b: _Builder, stream: _Flat, orders: Tuple[int, int], hasher: _Hasher) -> List[str]:
    low, high = orders
    grams, out = stream.values, []
    for n in range(1, high + 1):
        if n > 1:
            grams = b.op("StringConcat", [grams, _shift(b, stream.values, n - 1, "")])
        if n >= low:
            out.append(hasher.keys(grams, stream.rows, _same_row_ahead(b, stream.rows, n - 1)))
    return out


def _words(b: _Builder, stream: _Flat, steps: int) -> _Flat:
    """Each word's first 2**steps characters, by doubling within the word.

    ``ends`` marks windows that already reach the word's end (a space follows
    inside the window), so a window only grows while it has not ended.
    """
    space = b.op("Equal", [stream.values, b.const(" ")])
    pieces = stream.values
    ends = _shift(b, space, 1, True)
    for step in range(steps):
        width = 2**step
        ahead = b.op("Where", [ends, b.const(""), _shift(b, pieces, width, "")])
        pieces = b.op("StringConcat", [pieces, ahead])
        ends = b.op("Or", [ends, _shift(b, ends, width, True)])
    starts = b.op("And", [b.op("Not", [space]), _shift_back(b, space, True)])
    return _compress(b, _Flat(pieces, stream.rows), starts)


def _word_ngrams(b: _Builder, words: _Flat, orders: Tuple[int, int], hasher: _Hasher) -> List[str]:
    low, high = orders
    # Few words per title: prefixing them is cheap, and keeps them apart from
    # character n-grams, which can never contain the "|" that folding removes.
    grams = b.op("StringConcat", [b.const(WORD_PREFIX), words.values])
    out = []
    for n in range(1, high + 1):
        if n > 1:
            spaced = b.op("StringConcat", [grams, b.const(" ")])
            grams = b.op("StringConcat", [spaced, _shift(b, words.values, n - 1, "")])
        if n >= low:
            out.append(hasher.keys(grams, words.rows, _same_row_ahead(b, words.rows, n - 1)))
    return out


@dataclass(frozen=True)
class _Hasher:
    """Feature names -> int64 keys ``row * n_features + bucket``, as sklearn hashes them."""

    b: _Builder
    n_features: int

    def keys(self, names: str, rows: str, valid: str) -> str:
        b = self.b
        hashed = b.op("MurmurHash3", [names], domain="com.microsoft", positive=0, seed=0)
        # abs(int32) in int64, so -2**31 maps like scikit-learn's special case.
        wide = b.op("Cast", [hashed], to=TensorProto.INT64)
        bucket = b.op("Mod", [b.op("Abs", [wide]), b.const(self.n_features)])
        key = b.op("Add", [b.op("Mul", [rows, b.const(self.n_features)]), bucket])
        return b.op("Compress", [key, valid], axis=0)


def _features(b: _Builder, spec: FeatureSpec, title: str, tags: str) -> str:
    """int64 keys ``row * n_features + bucket`` of every feature of every row."""
    text = b.op("StringConcat", [b.op("StringConcat", [title, b.const(" ")]), tags])
    stream = _stream(b, text, spec.fold)
    hasher = _Hasher(b, spec.n_features)
    families = _char_ngrams(b, stream, spec.char_ngrams, hasher)
    families += _word_ngrams(b, _words(b, stream, spec.doubling_steps), spec.word_ngrams, hasher)
    return b.op("Concat", families, axis=0)


# --- feature names -> scores ----------------------------------------------------


def _hashed_counts(b: _Builder, key: str, n_features: int) -> Tuple[str, str, str]:
    """(row, bucket, count) per distinct (row, bucket), sorted as scikit-learn's CSR.

    Sorting the keys ``row * n_features + bucket`` groups repeats in
    O(T log T); onnxruntime's Unique (and CumSum) were far slower.
    """
    n_keys = b.op("Shape", [key])
    ordered, _ = b.ops("TopK", [key, n_keys], 2, axis=0, largest=0, sorted=1)
    first = b.op("Not", [b.op("Equal", [ordered, _shift_back(b, ordered, -1)])])
    starts = b.op(
        "Compress", [b.op("Range", [b.const(0), b.op("Squeeze", [n_keys]), b.const(1)]), first], axis=0
    )
    ends = b.op("Slice", [b.op("Concat", [starts, n_keys], axis=0), b.const([1]), b.const([_INT64_MAX])])
    counts = b.op("Cast", [b.op("Sub", [ends, starts])], to=TensorProto.DOUBLE)
    keys = b.op("Compress", [ordered, first], axis=0)
    return b.op("Div", [keys, b.const(n_features)]), b.op("Mod", [keys, b.const(n_features)]), counts


def _zeros(b: _Builder, shape: str) -> str:
    return b.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0]))


def _scores(b: _Builder, spec: FeatureSpec, keys: str, n_rows: str) -> str:
    """Sublinear tf-idf, l2-normalised per row, dotted with the coefficients."""
    rows, buckets, counts = _hashed_counts(b, keys, spec.n_features)
    table = b.op("Cast", [b.op("Gather", [WEIGHTS, buckets], axis=0)], to=TensorProto.DOUBLE)
    idf, coef = _split_idf(b, table)
    tf = b.op("Add", [b.op("Log", [counts]), b.const(1.0)])
    values = b.op("Mul", [tf, idf])
    square = b.op("Mul", [values, values])
    squares = b.op("ScatterElements", [_zeros(b, n_rows), rows, square], axis=0, reduction="add")
    norm = b.op("Sqrt", [squares])
    # scikit-learn leaves an all-zero row at zero; dividing it by 1 does the same.
    safe = b.op("Where", [b.op("Equal", [norm, b.const(0.0)]), b.const(1.0), norm])
    scaled = b.op("Div", [values, b.op("Gather", [safe, rows], axis=0)])
    contrib = b.op("Mul", [coef, b.op("Unsqueeze", [scaled, b.const([1])])])
    grid = _zeros(b, b.op("Concat", [n_rows, b.op("Shape", [INTERCEPT])], axis=0))
    # ScatterElements, not ScatterND: onnxruntime 1.19 parallelises ScatterND's
    # updates, and additions to the same row race (seen as batch-dependent scores).
    targets = b.op("Expand", [b.op("Unsqueeze", [rows, b.const([1])]), b.op("Shape", [contrib])])
    summed = b.op("ScatterElements", [grid, targets, contrib], axis=0, reduction="add")
    return b.op("Add", [summed, INTERCEPT])


def _split_idf(b: _Builder, table: str) -> Tuple[str, str]:
    """Column 0 of the gathered weight rows (idf, as [U]) and the rest (coefficients)."""
    idf = b.op("Squeeze", [b.op("Slice", [table, b.const([0]), b.const([1]), b.const([1])]), b.const([1])])
    coef = b.op("Slice", [table, b.const([1]), b.const([_INT64_MAX]), b.const([1])])
    return idf, coef


def build_model(
    spec: FeatureSpec,
    idf: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    labels: Sequence[str],
    metadata: Dict[str, str],
) -> onnx.ModelProto:
    """The serving graph for a fitted tf-idf + linear model over `spec`'s hashed features.

    `coef` is ``[n_classes, n_features]`` as scikit-learn stores it. idf and
    coef are stored as float32 (half the file) and widened to float64 after
    the gather, so the caller must round the scikit-learn model's weights the
    same way for parity (model.fit does).
    """
    b = _Builder()
    b.weight(WEIGHTS, np.column_stack([idf, np.asarray(coef).T]).astype(np.float32))
    b.weight(INTERCEPT, np.asarray(intercept, dtype=np.float64))
    feats = _features(b, spec, "title", "concatenated_tags")
    scores = _scores(b, spec, feats, b.op("Shape", ["title"]))
    # Multiclass SGD log-loss: one-vs-rest sigmoids normalised by their sum.
    sig = b.op("Sigmoid", [scores])
    proba = b.op("Div", [sig, b.op("ReduceSum", [sig, b.const([1])], keepdims=1)])
    best = b.op("ArgMax", [proba], axis=1, keepdims=0)
    b.nodes.append(helper.make_node("Gather", [b.const(list(labels), "labels"), best], ["label"], axis=0))
    b.nodes.append(helper.make_node("Cast", [proba], ["probabilities"], to=TensorProto.FLOAT))
    return _model(b, len(labels), metadata)


def _model(b: _Builder, n_classes: int, metadata: Dict[str, str]) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("title", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("concatenated_tags", TensorProto.STRING, ["N"]),
    ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes]),
    ]
    graph = helper.make_graph(b.nodes, "elo7_categorizer", inputs, outputs, initializer=b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid("ai.onnx.ml", ML_OPSET),
            helper.make_opsetid("com.microsoft", MS_OPSET),
        ],
        ir_version=IR_VERSION,
        producer_name="elo7-categorizer",
    )
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model
