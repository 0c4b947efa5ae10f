"""The ONNX realisation of :class:`~categorizer.features.FeatureSpec`, plus the
linear model on top of it.

Raw strings in, label and probabilities out. Everything after the character
table is integer arithmetic on *flat* tensors: the codes of all rows form one
1-D tensor with a parallel tensor of row ids, so no step costs more than
linear time in the batch's characters (a dense ``[N, n_features]`` tensor, or
a pairwise ``[T, T]`` comparison, would not).

Pipeline: title + " " + tags -> Tokenizer (character mode) -> code table
(LabelEncoder: fold, code point) -> flatten, drop pads and deleted marks,
collapse runs of spaces -> character n-gram fingerprints by shifted
multiply-adds; word fingerprints from a fixed-width window per word ->
word n-gram fingerprints -> 7-bit bytes -> MurmurHash3 -> bucket in its
block (characters, words) -> gather (idf, coefficients) per n-gram -> per-row
sums per block (scatter-add) -> occurrence l2 norm per block -> one-vs-rest
sigmoids normalised by their sum. Each row gathers from the weights of one of
two heads: the tags head when its tags string is not empty, else the title
head (see model.Model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from categorizer.features import (
    FINGERPRINT_MASK,
    MAX_NGRAM_ORDER,
    OTHER,
    SKIP_MARK,
    SPACE,
    WORD_MARK,
    FeatureSpec,
)
from categorizer.heads import EMPTY_TAGS, N_HEADS
from categorizer.weights import INTERCEPT, WEIGHTS, weight_table

# StringConcat first appears in opset 20; onnxruntime 1.19 (the last release for
# Python 3.9) refuses opset 22+ and IR versions above 10.
OPSET = 20
IR_VERSION = 9
ML_OPSET = 3  # LabelEncoder with string keys and int64 values
MS_OPSET = 1  # com.microsoft: Tokenizer, MurmurHash3

# Codes the character table gives besides code points: a deleted character
# (combining mark) and the Tokenizer's padding. Both are dropped; real codes are >= 0.
_DELETED = -1
_PAD = -2
# Longest shift any step takes: n - 1 for an n-gram.
_MAX_SHIFT = MAX_NGRAM_ORDER - 1


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
    """A flat tensor (characters, then their codes) and the batch row of each element."""

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


# --- text -> flat code streams ---------------------------------------------------


def code_table(fold: Dict[str, str]) -> Tuple[List[str], List[int]]:
    """(character, code) for the Tokenizer's padding and every BMP character.

    A character's code is the code point of its fold; SPACE for separators,
    _DELETED for combining marks. Anything else (beyond the BMP) gets OTHER
    as the LabelEncoder's default, as features.codes does.
    """
    keys, values = [""], [_PAD]
    for point in range(0x10000):
        if 0xD800 <= point < 0xE000:  # surrogates never reach the graph
            continue
        char = chr(point)
        folded = fold.get(char, char)
        keys.append(char)
        values.append(ord(folded) if folded else _DELETED)
    return keys, values


def _stream(b: _Builder, text: str, fold: Dict[str, str]) -> _Flat:
    """Flat codes of ' w1 w2 ... ' streams: every row starts and ends with one space."""
    # separators=[""] is the Tokenizer's character mode; rows are padded with "".
    chars = b.op(
        "Tokenizer", [text], domain="com.microsoft", mark=0, mincharnum=1, pad_value="", separators=[""]
    )
    keys, values = code_table(fold)
    codes = b.op(
        "LabelEncoder",
        [chars],
        domain="ai.onnx.ml",
        keys_strings=keys,
        values_int64s=values,
        default_int64=OTHER,
    )
    n_rows = b.op("Slice", [b.op("Shape", [text]), b.const([0]), b.const([1])])
    edge = b.op("Expand", [b.const([[SPACE]]), b.op("Concat", [n_rows, b.const([1])], axis=0)])
    framed = b.op("Concat", [edge, codes, edge], axis=1)
    row_ids = b.op("Range", [b.const(0), b.op("Squeeze", [n_rows]), b.const(1)])
    grid_rows = b.op("Expand", [b.op("Unsqueeze", [row_ids, b.const([1])]), b.op("Shape", [framed])])
    flat = _Flat(b.op("Reshape", [framed, b.const([-1])]), b.op("Reshape", [grid_rows, b.const([-1])]))
    flat = _compress(b, flat, b.op("GreaterOrEqual", [flat.values, b.const(0)]))
    return _collapse_spaces(b, flat)


def _collapse_spaces(b: _Builder, flat: _Flat) -> _Flat:
    space = b.op("Equal", [flat.values, b.const(SPACE)])
    prev_space = _shift_back(b, space, False)
    prev_same_row = b.op("Equal", [_shift_back(b, flat.rows, -1), flat.rows])
    repeated = b.op("And", [space, b.op("And", [prev_space, prev_same_row])])
    return _compress(b, flat, b.op("Not", [repeated]))


def _shift_back(b: _Builder, x: str, fill: object) -> str:
    """x[i - 1], with `fill` at position 0."""
    joined = b.op("Concat", [b.const([fill]), x], axis=0)
    return b.op("Slice", [joined, b.const([0]), b.const([-1]), b.const([0])])


# --- streams -> fingerprints ------------------------------------------------------


def _masked(b: _Builder, x: str) -> str:
    """x modulo 2**28 (x >= 0)."""
    return b.op("BitwiseAnd", [x, b.const(FINGERPRINT_MASK)])


def _char_ngrams(b: _Builder, spec: FeatureSpec, stream: _Flat) -> List[_Family]:
    """Fingerprints of the n-grams starting at each position, one family per order."""
    low, high = spec.char_ngrams
    fp, out = stream.values, []
    for n in range(1, high + 1):
        if n > 1:
            term = b.op("Mul", [_shift(b, stream.values, n - 1, 0), b.const(spec.power(n - 1))])
            fp = _masked(b, b.op("Add", [fp, term]))
        if n >= low:
            out.append(_Family(fp, _same_row_ahead(b, stream.rows, n - 1)))
    return out


@dataclass(frozen=True)
class _Family:
    """Fingerprints of one n-gram family and which ones are real: an n-gram that
    runs past its row's end is scored in the zero bucket rather than removed."""

    fps: str
    valid: str


@dataclass(frozen=True)
class _Words:
    """Per word: fingerprint (WORD_MARK + its first max_word_chars codes), length
    and row."""

    fps: str
    lengths: str
    rows: str


def _words(b: _Builder, spec: FeatureSpec, stream: _Flat) -> _Words:
    """Words lie between consecutive spaces of the stream; each is read through a
    fixed window of max_word_chars codes, so its cost does not depend on its length."""
    codes = stream.values
    size = b.op("Shape", [codes])
    positions = b.op("Range", [b.const(0), b.op("Squeeze", [size]), b.const(1)])
    spaces = b.op("Compress", [positions, b.op("Equal", [codes, b.const(SPACE)])], axis=0)
    # Between the last space of one row and the first of the next lies no word.
    gaps = b.op("Sub", [b.op("Sub", [_shift(b, spaces, 1, 0), spaces]), b.const(1)])
    real = b.op("Greater", [gaps, b.const(0)])
    starts = b.op("Compress", [b.op("Add", [spaces, b.const(1)]), real], axis=0)
    lengths = b.op("Min", [b.op("Compress", [gaps, real], axis=0), b.const(spec.max_word_chars)])
    rows = b.op("Gather", [stream.rows, starts], axis=0)
    offsets = b.const(list(range(spec.max_word_chars)))
    last = b.op("Sub", [size, b.const(1)])
    window = b.op("Min", [b.op("Add", [b.op("Unsqueeze", [starts, b.const([1])]), offsets]), last])
    weights = b.const([spec.power(j + 1) for j in range(spec.max_word_chars)])
    terms = _masked(b, b.op("Mul", [b.op("Gather", [codes, window], axis=0), weights]))
    inside = b.op("Less", [offsets, b.op("Unsqueeze", [lengths, b.const([1])])])
    summed = b.op("ReduceSum", [b.op("Where", [inside, terms, b.const(0)]), b.const([1])], keepdims=0)
    return _Words(_masked(b, b.op("Add", [summed, b.const(WORD_MARK)])), lengths, rows)


def _word_ngrams(b: _Builder, spec: FeatureSpec, words: _Words) -> List[_Family]:
    """poly(WORD_MARK + "w1 ... wn") = poly(... w(n-1)) + B**L * (SPACE + fp(wn) - WORD_MARK),
    with L the length so far (see FeatureSpec.word_fingerprints)."""
    low, high = spec.word_ngrams
    powers = b.const([spec.power(k) for k in range(spec.max_word_ngram_chars() + 1)])
    # Each word's fingerprint as a continuation: a space, then its codes.
    tails = b.op("Add", [words.fps, b.const(SPACE - WORD_MARK)])
    fp, length, out = words.fps, b.op("Add", [words.lengths, b.const(1)]), []
    for n in range(1, high + 1):
        if n > 1:
            scale = b.op("Gather", [powers, length], axis=0)
            fp = _masked(b, b.op("Add", [fp, _masked(b, b.op("Mul", [scale, _shift(b, tails, n - 1, 0)]))]))
            ahead = _shift(b, words.lengths, n - 1, 0)
            length = b.op("Add", [length, b.op("Add", [ahead, b.const(1)])])
        if n >= low:
            out.append(_Family(fp, _same_row_ahead(b, words.rows, n - 1)))
    if spec.skip_bigrams:
        # poly(SKIP_MARK + "w1 w3"): the first word with its mark swapped, then w3 as a tail.
        scale = b.op("Gather", [powers, b.op("Add", [words.lengths, b.const(1)])], axis=0)
        first = b.op("Add", [words.fps, b.const(SKIP_MARK - WORD_MARK)])
        fp = _masked(b, b.op("Add", [first, _masked(b, b.op("Mul", [scale, _shift(b, tails, 2, 0)]))]))
        out.append(_Family(fp, _same_row_ahead(b, words.rows, 2)))
    return out


def _buckets(b: _Builder, fps: str, width: int) -> str:
    """Bucket of each fingerprint within its block, as HashingVectorizer hashes its
    four-character name."""
    name = _spread(b, fps)
    hashed = b.op(
        "MurmurHash3",
        [b.op("Cast", [name], to=TensorProto.INT32)],
        domain="com.microsoft",
        positive=0,
        seed=0,
    )
    # abs(int32) in int64, so -2**31 maps like scikit-learn's special case.
    wide = b.op("Cast", [hashed], to=TensorProto.INT64)
    return b.op("Mod", [b.op("Abs", [wide]), b.const(width)])


def _spread(b: _Builder, fps: str) -> str:
    """The 28 bits as four 7-bit bytes, little end first: the name's UTF-8 bytes."""
    spread = b.op("BitwiseAnd", [fps, b.const(0x7F)])
    for byte in (1, 2, 3):
        bits = b.op("BitwiseAnd", [fps, b.const(0x7F << (7 * byte))])
        spread = b.op("Add", [spread, b.op("Mul", [bits, b.const(1 << byte)])])
    return spread


@dataclass(frozen=True)
class _Block:
    """One block's n-grams: per family, the bucket of the n-gram at each of P
    places (stream positions for characters, words for word n-grams; the zero
    bucket where none is real), and each place's row."""

    buckets: List[str]
    rows: str


def _features(b: _Builder, spec: FeatureSpec, title: str, tags: str, tables: str) -> Tuple[_Block, _Block]:
    """Buckets of every n-gram: the character block's, then the word block's.
    `tables` is each row's first WEIGHTS row: its head's table."""
    text = b.op("StringConcat", [b.op("StringConcat", [title, b.const(" ")]), tags])
    stream = _stream(b, text, spec.fold)
    chars = _bucket_grid(
        b, spec, _char_ngrams(b, spec, stream), 0, b.op("Gather", [tables, stream.rows], axis=0)
    )
    words = _words(b, spec, stream)
    word_tables = b.op("Gather", [tables, words.rows], axis=0)
    grams = _bucket_grid(b, spec, _word_ngrams(b, spec, words), spec.block_width, word_tables)
    return _Block(chars, stream.rows), _Block(grams, words.rows)


def _bucket_grid(
    b: _Builder, spec: FeatureSpec, families: List[_Family], offset: int, tables: str
) -> List[str]:
    """Per family, the WEIGHTS row of each n-gram: its place's table + offset + its
    bucket, or + n_features (the table's zero row) where not valid. Hashed as one
    stacked tensor: fewer nodes."""

    def stack(parts: List[str]) -> str:
        return b.op("Concat", [b.op("Unsqueeze", [part, b.const([0])]) for part in parts], axis=0)

    fps, valid = stack([f.fps for f in families]), stack([f.valid for f in families])
    buckets = b.op("Add", [_buckets(b, fps, spec.block_width), b.const(offset)])
    grid = b.op("Add", [b.op("Where", [valid, buckets, b.const(spec.n_features)]), tables])
    split = b.ops("Split", [grid], len(families), axis=0, num_outputs=len(families))
    return [b.op("Squeeze", [family, b.const([0])]) for family in split]


# --- features -> scores ------------------------------------------------------------


def _scores(b: _Builder, blocks: Sequence[_Block], n_rows: str, n_classes: int, heads: str) -> str:
    """tf-idf with an occurrence l2 norm per block (see model.OccurrenceTfidf), dotted
    with the coefficients: per block, (sum of idf * coef over a row's n-grams) /
    sqrt(sum of idf**2), then the blocks' sum plus the row's head's intercept."""
    parts = [_block_scores(b, block, n_rows, n_classes) for block in blocks]
    return b.op("Add", [b.op("Sum", parts), b.op("Gather", [INTERCEPT, heads], axis=0)])


def _block_scores(b: _Builder, block: _Block, n_rows: str, n_classes: int) -> str:
    # One gather per family and an n-ary Sum: cheaper than one gather and a ReduceSum.
    weighted = [_weighted(b, buckets) for buckets in block.buckets]
    per_place = b.op("Sum", weighted)
    sums = _row_sums(b, per_place, block.rows, n_rows, 1 + n_classes)
    squares, dots = sums[0], b.op("Concat", [b.op("Unsqueeze", [s, b.const([1])]) for s in sums[1:]], axis=1)
    norm = b.op("Sqrt", [squares])
    # scikit-learn leaves an all-zero block at zero; dividing it by 1 does the same.
    safe = b.op("Where", [b.op("Equal", [norm, b.const(0.0)]), b.const(1.0), norm])
    return b.op("Div", [dots, b.op("Unsqueeze", [safe, b.const([1])])])


def _weighted(b: _Builder, buckets: str) -> str:
    """The WEIGHTS rows of `buckets`, widened to float64 for exact sums."""
    return b.op("Cast", [b.op("Gather", [WEIGHTS, buckets], axis=0)], to=TensorProto.DOUBLE)


def _row_sums(b: _Builder, values: str, rows: str, n_rows: str, n_columns: int) -> List[str]:
    """Per-row sums of each column of `values` ([P, n_columns]), as [N] tensors.

    One 1-D ScatterElements per column: onnxruntime runs ScatterElements
    sequentially, where ScatterND's parallel additions to one row race
    (seen as batch-dependent scores), and a 2-D scatter needs its row ids
    expanded to [P, n_columns] first, which costs more than the scatter.
    """
    zeros = b.op(
        "ConstantOfShape", [n_rows], value=helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0])
    )
    columns = b.ops("Split", [values], n_columns, axis=1, num_outputs=n_columns)
    return [
        b.op(
            "ScatterElements", [zeros, rows, b.op("Squeeze", [column, b.const([1])])], axis=0, reduction="add"
        )
        for column in columns
    ]


def build_model(
    spec: FeatureSpec,
    heads: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    labels: Sequence[str],
    metadata: Dict[str, str],
) -> onnx.ModelProto:
    """The serving graph for fitted tf-idf + linear heads over `spec`'s hashed features.

    `heads` holds (idf, coef, intercept) of the title head, then of the tags
    head; coef is ``[n_classes, n_features]`` as scikit-learn stores it. idf
    and coef must lie on weights.round_weights' grid (model.fit rounds them).
    """
    if len(heads) != N_HEADS:
        raise ValueError(f"expected {N_HEADS} heads (title, tags), got {len(heads)}")
    b = _Builder()
    b.weight(WEIGHTS, np.vstack([weight_table(idf, coef) for idf, coef, _ in heads]))
    b.weight(INTERCEPT, np.stack([np.asarray(intercept, dtype=np.float64) for _, _, intercept in heads]))
    # One empty row more: for an empty batch the Tokenizer answers a 1-D tensor that
    # the rest of the graph cannot take (onnxruntime aborted the process). The extra
    # row's score is dropped below; an empty batch gets empty outputs.
    title, tags = (b.op("Concat", [name, b.const([""])], axis=0) for name in ("title", "concatenated_tags"))
    # Head 1 (tags) where the tags string is not empty, as heads.head_of decides.
    head = b.op("Cast", [b.op("Not", [b.op("Equal", [tags, b.const(EMPTY_TAGS)])])], to=TensorProto.INT64)
    tables = b.op("Mul", [head, b.const(spec.n_features + 1)])
    blocks = _features(b, spec, title, tags, tables)
    padded = _scores(b, blocks, b.op("Shape", [title]), len(labels), head)
    scores = b.op("Slice", [padded, b.const([0]), b.op("Shape", ["title"]), b.const([0])])
    # Multiclass SGD log-loss: one-vs-rest sigmoids normalised by their sum.
    sig = b.op("Sigmoid", [scores])
    proba = b.op("Div", [sig, b.op("ReduceSum", [sig, b.const([1])], keepdims=1)])
    # The label is scikit-learn's predict: the best score, not the best probability
    # (sigmoids saturate to equal 1.0 on long, repetitive rows).
    best = b.op("ArgMax", [scores], axis=1, keepdims=0)
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
