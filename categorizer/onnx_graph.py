"""The ONNX realisation of :class:`~categorizer.features.FeatureSpec`, plus the
linear heads on top of it, stage by stage.

Raw strings in, label and probabilities out. Each stage of features.STAGES is
one function here, namesake of its scikit-learn realisation in
:mod:`categorizer.sklearn_twin`; the nodes it adds are named after it
(``stream/Tokenizer_8``), so onnxruntime's profiler can say what each stage
costs, and ``build_model(expose=...)`` adds its tensors as outputs
(``stream.codes``) for the per-stage parity tests.

Everything after the character table is integer arithmetic on *flat*
tensors: the codes of all rows form one 1-D tensor with a parallel tensor of
row ids, so no step costs more than linear time in the batch's characters (a
dense ``[N, n_features]`` tensor, or a pairwise ``[T, T]`` comparison, would not).

* STREAM: title + " " + tags -> Tokenizer (character mode) -> code table
  (LabelEncoder: fold, code point) -> flatten, drop pads and deleted marks,
  collapse runs of spaces.
* CHAR_FINGERPRINTS: shifted multiply-adds over the stream, one family per order.
* WORD_FINGERPRINTS: each word's fingerprint from a fixed-width window, then
  word n-grams from those; SKIP_FINGERPRINTS: pairs one word apart.
* BUCKETS: MurmurHash3 of each fingerprint's four 7-bit groups, modulo its block's width.
* FIELD_TOKENS: the seller through a LabelEncoder of the sellers seen in
  training, each number's bin as the count of its edges at or below it.
* HEAD_CHOICE: a tags head where the tags string is not empty, a twin with fields
  where some field token is known (heads.head_of).
* BLOCK_SCORES: gather (idf**2, idf * coef) per n-gram from its row's head's
  table, per-row sums (scatter-add), occurrence l2 norm per block; the field
  tokens' rows of the head's field table, summed.
* PROBABILITIES: the blocks' sum plus the intercept, one-vs-rest sigmoids
  normalised by their sum, and the label of the best score.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from categorizer.features import (
    BLOCK_SCORES,
    BUCKETS,
    CHAR_FINGERPRINTS,
    FIELD_TOKENS,
    FINGERPRINT_MASK,
    HEAD_CHOICE,
    MAX_NGRAM_ORDER,
    NUMBER_FIELDS,
    OTHER,
    PROBABILITIES,
    SELLER,
    SKIP_FINGERPRINTS,
    SKIP_MARK,
    SPACE,
    STAGES,
    STREAM,
    WORD_FINGERPRINTS,
    WORD_MARK,
    Doc,
    FeatureSpec,
)
from categorizer.heads import EMPTY_TAGS, N_HEADS, TAGS_HEAD, TITLE_HEAD
from categorizer.sklearn_twin import UNKNOWN, Fields, FieldTokens
from categorizer.weights import FIELD_WEIGHTS, INTERCEPT, WEIGHTS, HeadWeights, field_table, weight_table

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

# The key of the shared [1] tensor holding N + 1, the batch's rows with the padding row.
PADDED_ROWS = "padded rows"

_ELEM = {"int64": TensorProto.INT64, "bool": TensorProto.BOOL, "double": TensorProto.DOUBLE}


@dataclass
class _Builder:
    """Accumulates nodes and initializers, handing out unique tensor names.

    Nodes are named after the stage being built; a stage in `expose` also
    gets its tensors as graph outputs named ``<stage>.<part>``.
    """

    expose: Collection[str] = ()
    nodes: List[onnx.NodeProto] = field(default_factory=list)
    inits: List[onnx.TensorProto] = field(default_factory=list)
    outputs: List[onnx.ValueInfoProto] = field(default_factory=list)
    # Tensors several steps use, built once by the first that asks (see once).
    shared: Dict[str, str] = field(default_factory=dict)
    stage: str = ""
    _count: int = 0

    @contextmanager
    def building(self, stage: str) -> Iterator[None]:
        outer, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = outer

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> None:
        name = f"{self.stage}/{self.name(op_type)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.node(op_type, inputs, [out], **attrs)
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: Any) -> List[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.node(op_type, inputs, outs, **attrs)
        return outs

    def once(self, key: str, make: Callable[[], str]) -> str:
        """The tensor `key` names, made by `make` the first time it is asked for."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer under a fixed name, so readers can find the weights."""
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, value: object, hint: str = "c", dtype: Optional[type] = None) -> str:
        name = self.name(hint)
        array: np.ndarray = np.array(value, dtype=dtype if dtype is not None else _dtype_of(value))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def show(self, part: str, tensor: str, elem: str, rank: int = 1) -> None:
        """Expose `tensor` as the output ``<stage>.<part>`` when the stage is exposed."""
        if self.stage in self.expose:
            out = f"{self.stage}.{part}"
            self.node("Identity", [tensor], [out])
            shape = [f"{out}_{axis}" for axis in range(rank)]
            self.outputs.append(helper.make_tensor_value_info(out, _ELEM[elem], shape))

    def show_stacked(self, part: str, tensors: Sequence[str], elem: str) -> None:
        """Expose a list of same-length 1-D tensors as one [len(tensors), P] output."""
        if self.stage not in self.expose:
            return
        if tensors:
            stacked = self.op("Concat", [_row(self, t) for t in tensors], axis=0)
        else:  # a family-less stage (no skip bigrams): an empty [0, 0] of the same type
            stacked = self.const(np.zeros((0, 0), dtype=np.bool_ if elem == "bool" else np.int64))
        self.show(part, stacked, elem, rank=2)


def _row(b: _Builder, x: str) -> str:
    return b.op("Unsqueeze", [x, b.const([0])])


def _dtype_of(value: object) -> type:
    kind = np.asarray(value).dtype.kind
    return {"U": object, "b": np.bool_, "i": np.int64}.get(kind, np.float64)


@dataclass(frozen=True)
class _Flat:
    """A flat tensor (characters, then their codes) and the batch row of each element."""

    values: str
    rows: str


@dataclass(frozen=True)
class _Families:
    """Families of n-grams over the same P places (stream positions for characters,
    words for word n-grams): per family, a value at each place (a fingerprint, then
    a bucket) and whether that n-gram is real (one that runs past its row's end is
    not); and each place's row."""

    values: List[str]
    valid: List[Optional[str]]  # None: every n-gram of the family is real (unigrams)
    rows: str

    def show(self, b: _Builder, part: str) -> None:
        if b.stage not in b.expose:
            return
        b.show_stacked(f"{part}values", self.values, "int64")
        every = [b.op("Equal", [self.rows, self.rows]) if v is None else v for v in self.valid]
        b.show_stacked(f"{part}valid", every, "bool")
        b.show(f"{part}rows", self.rows, "int64")


# --- small graph idioms --------------------------------------------------------


def _shift(b: _Builder, x: str, k: int, fill: object) -> str:
    """x[i + k], with `fill` past the end; same length as x even when len < k.

    Every shift of one tensor slices a single copy of it padded with
    _MAX_SHIFT fills, so n-gram orders 2..5 cost one copy each rather than two;
    the slice ends k - _MAX_SHIFT from the copy's end, a constant, so a shift
    is one node.
    """
    if not 0 <= k <= _MAX_SHIFT:
        raise ValueError(f"shift {k} is not in 0..{_MAX_SHIFT}")
    if k == 0:
        return x
    padded = b.once(f"padded {x} {fill!r}", lambda: b.op("Concat", [x, b.const([fill] * _MAX_SHIFT)], axis=0))
    end = k - _MAX_SHIFT if k < _MAX_SHIFT else np.iinfo(np.int64).max
    return b.op("Slice", [padded, b.const([k]), b.const([end]), b.const([0])])


def _shift_back(b: _Builder, x: str, fill: object) -> str:
    """x[i - 1], with `fill` at position 0."""
    joined = b.op("Concat", [b.const([fill]), x], axis=0)
    return b.op("Slice", [joined, b.const([0]), b.const([-1]), b.const([0])])


def _compress(b: _Builder, flat: _Flat, keep: str) -> _Flat:
    return _Flat(
        b.op("Compress", [flat.values, keep], axis=0),
        b.op("Compress", [flat.rows, keep], axis=0),
    )


def _same_row_ahead(b: _Builder, rows: str, k: int) -> Optional[str]:
    """Whether the place k ahead is in the same row; None for k = 0 (always)."""
    return b.op("Equal", [_shift(b, rows, k, -1), rows]) if k else None


def _masked(b: _Builder, x: str) -> str:
    """x modulo 2**28 (x >= 0)."""
    return b.op("BitwiseAnd", [x, b.const(FINGERPRINT_MASK)])


# --- STREAM: text -> flat codes ----------------------------------------------------


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


def stream(b: _Builder, spec: FeatureSpec, title: str, tags: str) -> _Flat:
    """Flat codes of ' w1 w2 ... ' streams: every row starts and ends with one space."""
    text = b.op("StringConcat", [b.op("StringConcat", [title, b.const(" ")]), tags])
    # separators=[""] is the Tokenizer's character mode; rows are padded with "".
    chars = b.op(
        "Tokenizer", [text], domain="com.microsoft", mark=0, mincharnum=1, pad_value="", separators=[""]
    )
    keys, values = code_table(spec.fold)
    codes = b.op(
        "LabelEncoder",
        [chars],
        domain="ai.onnx.ml",
        keys_strings=keys,
        values_int64s=values,
        default_int64=OTHER,
    )
    n_rows = b.once(PADDED_ROWS, lambda: b.op("Shape", [text]))
    edge = b.op("Expand", [b.const([[SPACE]]), b.op("Concat", [n_rows, b.const([1])], axis=0)])
    framed = b.op("Concat", [edge, codes, edge], axis=1)
    row_ids = b.op("Range", [b.const(0), b.op("Squeeze", [n_rows]), b.const(1)])
    grid_rows = b.op("Expand", [b.op("Unsqueeze", [row_ids, b.const([1])]), b.op("Shape", [framed])])
    flat = _Flat(b.op("Reshape", [framed, b.const([-1])]), b.op("Reshape", [grid_rows, b.const([-1])]))
    flat = _collapse_spaces(b, _compress(b, flat, b.op("GreaterOrEqual", [flat.values, b.const(0)])))
    b.show("codes", flat.values, "int64")
    b.show("rows", flat.rows, "int64")
    return flat


def _collapse_spaces(b: _Builder, flat: _Flat) -> _Flat:
    space = b.op("Equal", [flat.values, b.const(SPACE)])
    prev_space = _shift_back(b, space, False)
    prev_same_row = b.op("Equal", [_shift_back(b, flat.rows, -1), flat.rows])
    repeated = b.op("And", [space, b.op("And", [prev_space, prev_same_row])])
    return _compress(b, flat, b.op("Not", [repeated]))


# --- fingerprints ------------------------------------------------------------------


def char_fingerprints(b: _Builder, spec: FeatureSpec, codes: _Flat) -> _Families:
    """Fingerprints of the n-grams starting at each stream position, one family per order."""
    low, high = spec.char_ngrams
    fp, values, valid = codes.values, [], []
    for n in range(1, high + 1):
        if n > 1:
            term = b.op("Mul", [_shift(b, codes.values, n - 1, 0), b.const(spec.power(n - 1))])
            fp = _masked(b, b.op("Add", [fp, term]))
        if n >= low:
            values.append(fp)
            valid.append(_same_row_ahead(b, codes.rows, n - 1))
    families = _Families(values, valid, codes.rows)
    families.show(b, "")
    return families


@dataclass(frozen=True)
class _Words:
    """Per word: fingerprint (WORD_MARK + its first max_word_chars codes), length
    and row."""

    fps: str
    lengths: str
    rows: str


def _words(b: _Builder, spec: FeatureSpec, codes: _Flat) -> _Words:
    """Words lie between consecutive spaces of the stream; each is read through a
    window of codes as wide as the batch's longest word, so that its cost does not
    depend on its own length, nor on max_word_chars when no word is that long."""
    size = b.op("Shape", [codes.values])
    positions = b.op("Range", [b.const(0), b.op("Squeeze", [size]), b.const(1)])
    spaces = b.op("Compress", [positions, b.op("Equal", [codes.values, b.const(SPACE)])], axis=0)
    # Between the last space of one row and the first of the next lies no word.
    gaps = b.op("Sub", [b.op("Sub", [_shift(b, spaces, 1, 0), spaces]), b.const(1)])
    real = b.op("Greater", [gaps, b.const(0)])
    starts = b.op("Compress", [b.op("Add", [spaces, b.const(1)]), real], axis=0)
    lengths = b.op("Min", [b.op("Compress", [gaps, real], axis=0), b.const(spec.max_word_chars)])
    rows = b.op("Gather", [codes.rows, starts], axis=0)
    # The window is as wide as the batch's longest (cut) word, at least one code.
    width = b.op("ReduceMax", [b.op("Concat", [lengths, b.const([1])], axis=0)], keepdims=1)
    offsets = _prefix(b, list(range(spec.max_word_chars)), width)
    last = b.op("Sub", [size, b.const(1)])
    window = b.op("Min", [b.op("Add", [b.op("Unsqueeze", [starts, b.const([1])]), offsets]), last])
    weights = _prefix(b, [spec.power(j + 1) for j in range(spec.max_word_chars)], width)
    terms = _masked(b, b.op("Mul", [b.op("Gather", [codes.values, window], axis=0), weights]))
    inside = b.op("Less", [offsets, b.op("Unsqueeze", [lengths, b.const([1])])])
    summed = b.op("ReduceSum", [b.op("Where", [inside, terms, b.const(0)]), b.const([1])], keepdims=0)
    return _Words(_masked(b, b.op("Add", [summed, b.const(WORD_MARK)])), lengths, rows)


def _prefix(b: _Builder, values: List[int], length: str) -> str:
    """The first `length` ([1] tensor) of constant `values`."""
    return b.op("Slice", [b.const(values), b.const([0]), length, b.const([0])])


def _word_powers(b: _Builder, spec: FeatureSpec) -> str:
    return b.once(
        "word powers", lambda: b.const([spec.power(k) for k in range(spec.max_word_ngram_chars() + 1)])
    )


def _tails(b: _Builder, words: _Words) -> str:
    """Each word's fingerprint as a continuation: a space, then its codes."""
    return b.once("word tails", lambda: b.op("Add", [words.fps, b.const(SPACE - WORD_MARK)]))


def _first_lengths(b: _Builder, words: _Words) -> str:
    """Each word's length with its mark: where the next word's tail starts."""
    return b.once("word lengths", lambda: b.op("Add", [words.lengths, b.const(1)]))


def _second_scale(b: _Builder, spec: FeatureSpec, words: _Words) -> str:
    """B**(length + 1) of each word: what the tail of a pair's second word is scaled by,
    in a bigram and in a skip bigram alike."""
    return b.once(
        "second scale", lambda: b.op("Gather", [_word_powers(b, spec), _first_lengths(b, words)], axis=0)
    )


def word_fingerprints(b: _Builder, spec: FeatureSpec, codes: _Flat) -> Tuple[_Families, _Words]:
    """Word n-gram fingerprints, one family per order, over the stream's words:
    poly(WORD_MARK + "w1 ... wn") = poly(... w(n-1)) + B**L * (SPACE + fp(wn) - WORD_MARK),
    with L the length so far (see sklearn_twin.word_fingerprints)."""
    words = _words(b, spec, codes)
    low, high = spec.word_ngrams
    fp, values, valid = words.fps, [], []
    if high > 1:
        length = _first_lengths(b, words)
    for n in range(1, high + 1):
        if n > 1:
            scale = (
                _second_scale(b, spec, words)
                if n == 2
                else b.op("Gather", [_word_powers(b, spec), length], axis=0)
            )
            tail = _shift(b, _tails(b, words), n - 1, 0)
            fp = _masked(b, b.op("Add", [fp, _masked(b, b.op("Mul", [scale, tail]))]))
            if n < high:
                ahead = _shift(b, words.lengths, n - 1, 0)
                length = b.op("Add", [length, b.op("Add", [ahead, b.const(1)])])
        if n >= low:
            values.append(fp)
            valid.append(_same_row_ahead(b, words.rows, n - 1))
    families = _Families(values, valid, words.rows)
    families.show(b, "")
    return families, words


def skip_fingerprints(b: _Builder, spec: FeatureSpec, words: _Words) -> _Families:
    """poly(SKIP_MARK + "w1 w3") at each word: the first word with its mark
    swapped, then w3 as a tail; no family when the spec has no skip bigrams."""
    families = _Families([], [], words.rows)
    if spec.skip_bigrams:
        first = b.op("Add", [words.fps, b.const(SKIP_MARK - WORD_MARK)])
        tail = _shift(b, _tails(b, words), 2, 0)
        fp = _masked(b, b.op("Add", [first, _masked(b, b.op("Mul", [_second_scale(b, spec, words), tail]))]))
        families = _Families([fp], [_same_row_ahead(b, words.rows, 2)], words.rows)
    families.show(b, "")
    return families


# --- BUCKETS -------------------------------------------------------------------------


def buckets(b: _Builder, spec: FeatureSpec, blocks: Sequence[_Families]) -> List[_Families]:
    """Each fingerprint's bucket within its block: |MurmurHash3| of its four 7-bit
    groups as an int32, modulo the block's width (sklearn_twin.buckets). Every
    family of every block is hashed as one flat tensor, then split back: each op
    runs once, however many families the spec has."""
    families = [values for block in blocks for values in block.values]
    sizes = [b.op("Shape", [block.rows]) for block in blocks]
    flat = b.op("Concat", families, axis=0)
    name = _spread(b, flat)
    hashed = b.op(
        "MurmurHash3",
        [b.op("Cast", [name], to=TensorProto.INT32)],
        domain="com.microsoft",
        positive=0,
        seed=0,
    )
    # abs(int32) in int64, so -2**31 maps like scikit-learn's special case.
    wide = b.op("Abs", [b.op("Cast", [hashed], to=TensorProto.INT64)])
    bucket = b.op("Mod", [wide, b.const(spec.block_width)])
    split = b.op("Concat", [size for block, size in zip(blocks, sizes) for _ in block.values], axis=0)
    parts = b.ops("Split", [bucket, split], len(families), axis=0)
    out, start = [], 0
    for block, part in zip(blocks, ("chars", "words")):
        hashed_block = _Families(parts[start : start + len(block.values)], block.valid, block.rows)
        hashed_block.show(b, f"{part}.")
        out.append(hashed_block)
        start += len(block.values)
    return out


def _spread(b: _Builder, fps: str) -> str:
    """The 28 bits as four 7-bit bytes, little end first: the name's UTF-8 bytes.

    Moving group k up k bits adds 2**j * (bits from group j + 1 up) for each j < k,
    so the spread is fp + A1 + 2 * (A2 + 2 * A3), A_i being fp's bits from group i
    up: eight operations where shifting each group costs ten.
    """
    above = [b.op("BitwiseAnd", [fps, b.const(FINGERPRINT_MASK & -(1 << (7 * i)))]) for i in (1, 2, 3)]
    inner = b.op("Add", [above[1], b.op("Mul", [above[2], b.const(2)])])
    return b.op("Add", [b.op("Add", [fps, above[0]]), b.op("Mul", [inner, b.const(2)])])


# --- FIELD_TOKENS ----------------------------------------------------------------------


def field_tokens(b: _Builder, spec: FeatureSpec, sellers: Sequence[str], starts: Sequence[int]) -> _Fields:
    """Each field's token (sklearn_twin.FieldTokens' layout, `starts` its fields' first
    tokens) of each product and of the padding row (all unknown), and whether each
    product has a token that is not unknown."""
    seller = _seller_tokens(b, sellers)
    numbers = b.op(
        "Reshape", [b.op("Concat", list(NUMBER_FIELDS), axis=0), b.const([len(NUMBER_FIELDS), -1, 1])]
    )
    # A number's token is its field's start + 1 + the count of its edges at or below it:
    # each field's edges here start with -inf (the 1, which NaN, unknown, does not get)
    # and are padded with NaN (never at or below anything, +inf included).
    edges = _edge_table(spec)
    at_or_above = b.op("GreaterOrEqual", [numbers, b.const(edges, dtype=np.float32)])
    bins = b.op("ReduceSum", [b.op("Cast", [at_or_above], to=TensorProto.INT64), b.const([2])], keepdims=0)
    # Counted from each field's own start, UNKNOWN (0) is unknown; the padding row is too.
    own = b.op("Pad", [b.op("Concat", [seller, bins], axis=0), b.const([0, 0, 0, 1]), b.const(UNKNOWN)])
    tokens = b.op("Add", [own, b.const([[start] for start in starts])])
    known = b.op("Min", [b.op("ReduceMax", [own, b.const([0])], keepdims=0), b.const(1)])
    b.show("tokens", tokens, "int64", rank=2)
    b.show("known", known, "int64")
    return _Fields(tokens, known)


@dataclass
class _Fields:
    tokens: str  # [1 + len(NUMBER_FIELDS), N + 1] int64
    known: str  # [N + 1] int64: 1 where a product has a field the model can use


def _seller_tokens(b: _Builder, sellers: Sequence[str]) -> str:
    """[1, N]: 1 + the seller's place in `sellers`, UNKNOWN for any other string."""
    if not sellers:  # LabelEncoder needs keys; a model that saw no seller knows none
        return b.op(
            "ConstantOfShape",
            [b.op("Concat", [b.const([1]), b.op("Shape", [SELLER])], axis=0)],
            value=helper.make_tensor("unknown", TensorProto.INT64, [1], [UNKNOWN]),
        )
    seller = b.op(
        "LabelEncoder",
        [SELLER],
        domain="ai.onnx.ml",
        keys_strings=list(sellers),
        values_int64s=list(range(1, len(sellers) + 1)),
        default_int64=UNKNOWN,
    )
    return b.op("Unsqueeze", [seller, b.const([0])])


def _edge_table(spec: FeatureSpec) -> np.ndarray:
    """[len(NUMBER_FIELDS), 1, K] float32: -inf, each field's edges, NaN padding."""
    widest = max(len(edges) for edges in spec.number_edges.values())
    table = np.full((len(NUMBER_FIELDS), 1, 1 + widest), np.nan, dtype=np.float32)
    table[:, 0, 0] = -np.inf
    for row, name in enumerate(NUMBER_FIELDS):
        edges = spec.number_edges[name]
        table[row, 0, 1 : 1 + len(edges)] = edges
    return table


# --- HEAD_CHOICE ---------------------------------------------------------------------


def head_choice(b: _Builder, tags: str, fields_known: str) -> str:
    """TAGS_HEAD where the tags string is not empty, else TITLE_HEAD, plus WITH_FIELDS
    where a field is known (heads.head_of)."""
    empty = b.op("Equal", [tags, b.const(EMPTY_TAGS)])
    text = b.op("Where", [empty, b.const(TITLE_HEAD), b.const(TAGS_HEAD)])
    head = b.op("Add", [text, fields_known])  # WITH_FIELDS is 1: known is the offset itself
    b.show("heads", head, "int64")
    return head


# --- BLOCK_SCORES ----------------------------------------------------------------------


def block_scores(
    b: _Builder, spec: FeatureSpec, blocks: Sequence[_Families], heads: str, n_rows: str, n_classes: int
) -> str:
    """[N, n_classes]: per block, tf-idf with an occurrence l2 norm (see
    sklearn_twin.OccurrenceTfidf) dotted with the coefficients, i.e. (sum of
    idf * coef over a row's n-grams) / sqrt(sum of idf**2), each row from its
    head's table; summed over the blocks.

    The blocks' scores are class-major ([n_classes, N]) until their sum, as the
    per-row sums come out of their scatter ([1 + n_classes, N], _row_sums): one
    transpose after the sum, instead of one per block.
    """
    tables = b.op("Mul", [heads, b.const(spec.n_features + 1)])
    scores = []
    for index, (block, part) in enumerate(zip(blocks, ("chars", "words"))):
        scores.append(_block_scores(b, spec, block, index, tables, n_rows, n_classes))
        if b.stage in b.expose:
            b.show(part, _transposed(b, scores[-1]), "double", rank=2)
    return _transposed(b, b.op("Sum", scores))


def _transposed(b: _Builder, x: str) -> str:
    return b.op("Transpose", [x], perm=[1, 0])


def field_scores(b: _Builder, tokens: str, heads: str, n_tokens: int) -> str:
    """[N, n_classes]: the sum of the field tokens' rows of each row's head's field table."""
    rows = b.op("Add", [tokens, b.op("Mul", [heads, b.const(n_tokens)])])
    gathered = b.op("Gather", [FIELD_WEIGHTS, rows], axis=0)
    scores = b.op("ReduceSum", [gathered, b.const([0])], keepdims=0)
    b.show("fields", scores, "double", rank=2)
    return scores


def _block_scores(
    b: _Builder, spec: FeatureSpec, block: _Families, index: int, tables: str, n_rows: str, n_classes: int
) -> str:
    # Each place's first WEIGHTS row in its block, and its head's zero row (made
    # only when a family's n-grams can run past a row's end).
    table = b.op("Gather", [tables, block.rows], axis=0)
    first = b.op("Add", [table, b.const(index * spec.block_width)])

    def zero() -> str:
        return b.once(f"zero rows {table}", lambda: b.op("Add", [table, b.const(spec.n_features)]))

    # One gather per family and an n-ary Sum: cheaper than one gather and a ReduceSum.
    weighted = [
        _weighted(b, _weight_rows(b, bucket, valid, first, zero))
        for bucket, valid in zip(block.values, block.valid)
    ]
    if not weighted:  # a spec whose word block is empty cannot exist; kept total for the type
        raise ValueError("a block has no n-gram family")
    per_place = b.op("Sum", weighted)
    sums = _row_sums(b, per_place, block.rows, n_rows, 1 + n_classes)
    squares, dots = b.ops("Split", [sums, b.const([1, n_classes])], 2, axis=0)
    norm = b.op("Sqrt", [squares])
    # scikit-learn leaves an all-zero block at zero; dividing it by 1 does the same.
    safe = b.op("Where", [b.op("Equal", [norm, b.const(0.0)]), b.const(1.0), norm])
    return b.op("Div", [dots, safe])


def _weight_rows(b: _Builder, bucket: str, valid: Optional[str], first: str, zero: Callable[[], str]) -> str:
    """Each n-gram's WEIGHTS row; an n-gram that runs past its row's end gets the zero row."""
    rows = b.op("Add", [bucket, first])
    return rows if valid is None else b.op("Where", [valid, rows, zero()])


def _weighted(b: _Builder, rows: str) -> str:
    """The WEIGHTS rows of `rows`, widened to float64 for exact sums."""
    return b.op("Cast", [b.op("Gather", [WEIGHTS, rows], axis=0)], to=TensorProto.DOUBLE)


def _row_sums(b: _Builder, values: str, rows: str, n_rows: str, n_columns: int) -> str:
    """[n_columns, N]: per-row sums of each column of `values` ([P, n_columns]).

    One ScatterElements along the last axis of the transposed values: onnxruntime
    runs ScatterElements sequentially, where ScatterND's parallel additions to
    one row race (seen as batch-dependent scores). Along the last axis it costs a
    little more per element than a 1-D scatter per column, and it takes three
    nodes where those take a Split and two per column: at one title a call the
    executor's time per node is most of the cost (docs/decisions.md).
    """
    zeros = b.once(
        f"zeros {n_columns} {n_rows}",
        lambda: b.op(
            "ConstantOfShape",
            [b.op("Concat", [b.const([n_columns]), n_rows], axis=0)],
            value=helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0]),
        ),
    )
    by_column = _transposed(b, values)
    # The row ids' shape comes from the transposed values, not a constant: that keeps
    # onnxruntime from expanding them ahead of the gathers, where the [n_columns, P]
    # copy would stay alive through the block's peak (a 256-title call of long titles
    # then grew a worker's memory by 71 MB instead of 49).
    where = b.op("Expand", [rows, b.op("Shape", [by_column])])
    return b.op("ScatterElements", [zeros, where, by_column], axis=1, reduction="add")


# --- PROBABILITIES -----------------------------------------------------------------------


def probabilities(b: _Builder, blocks: Sequence[str], heads: str, labels: Sequence[str], n_real: str) -> None:
    """The outputs `label` and `probabilities` from the blocks' scores of the first n_real rows."""
    padded = b.op("Sum", [*blocks, b.op("Gather", [INTERCEPT, heads], axis=0)])
    scores = b.op("Slice", [padded, b.const([0]), n_real, b.const([0])])
    b.show("scores", scores, "double", rank=2)
    # Multiclass SGD log-loss: one-vs-rest sigmoids normalised by their sum.
    # 1 / (1 + exp(-x)) as scikit-learn's expit: onnxruntime's Sigmoid loses
    # values below 2**-52, and the sum's normalisation magnifies that error
    # on rows whose every score is very negative.
    sig = b.op("Reciprocal", [b.op("Add", [b.op("Exp", [b.op("Neg", [scores])]), b.const(1.0)])])
    proba = b.op("Div", [sig, b.op("ReduceSum", [sig, b.const([1])], keepdims=1)])
    # The label is scikit-learn's predict: the best score, not the best probability
    # (sigmoids saturate to equal 1.0 on long, repetitive rows).
    best = b.op("ArgMax", [scores], axis=1, keepdims=0)
    b.node("Gather", [b.const(list(labels), "labels"), best], ["label"], axis=0)
    b.node("Cast", [proba], ["probabilities"], to=TensorProto.FLOAT)


# --- the whole graph ----------------------------------------------------------------------


def feeds(batch: Sequence[Doc], fields: Optional[Fields] = None) -> Dict[str, np.ndarray]:
    """The graph's inputs for `batch` and its listing fields (None: every field unknown)."""
    known = Fields.unknown(len(batch)) if fields is None else fields
    inputs = {
        "title": np.array([title for title, _ in batch], dtype=object),
        "concatenated_tags": np.array([tags for _, tags in batch], dtype=object),
        SELLER: np.array(list(known.sellers), dtype=object),
    }
    for column, name in enumerate(NUMBER_FIELDS):
        inputs[name] = np.ascontiguousarray(known.numbers[:, column])
    return inputs


def build_model(
    spec: FeatureSpec,
    heads: Sequence[HeadWeights],
    labels: Sequence[str],
    metadata: Dict[str, str],
    fields: FieldTokens,
    expose: Collection[str] = (),
) -> onnx.ModelProto:
    """The serving graph for fitted tf-idf + linear heads over `spec`'s hashed features
    and the field tokens laid out by `fields`.

    `heads` holds the title head's weights, then the tags head's; coef is
    ``[n_classes, n_features]`` as scikit-learn stores it. idf and coef must lie on
    model.round_weights' grid (model.fit rounds them).
    `expose` names stages (features.STAGES) whose tensors become extra outputs;
    tensors per row or per place then include one padding row (row N) and its places.
    """
    if len(heads) != N_HEADS:
        raise ValueError(f"expected {N_HEADS} heads (heads.py), got {len(heads)}")
    unknown = sorted(set(expose) - set(STAGES))
    if unknown:
        raise ValueError(f"no such stage(s) {unknown}; the stages are {list(STAGES)}")
    b = _Builder(expose=frozenset(expose))
    b.weight(WEIGHTS, np.vstack([weight_table(head.idf, head.coef) for head in heads]))
    b.weight(INTERCEPT, np.stack([np.asarray(head.intercept, dtype=np.float64) for head in heads]))
    values = fields.values_()
    b.weight(FIELD_WEIGHTS, np.vstack([field_table(values, head.field_coef) for head in heads]))
    with b.building(STREAM):
        # One empty row more: for an empty batch the Tokenizer answers a 1-D tensor that
        # the rest of the graph cannot take (onnxruntime aborted the process). The extra
        # row's score is dropped at the end; an empty batch gets empty outputs.
        title, tags = (
            b.op("Concat", [name, b.const([""])], axis=0) for name in ("title", "concatenated_tags")
        )
        codes = stream(b, spec, title, tags)
    with b.building(CHAR_FINGERPRINTS):
        chars = char_fingerprints(b, spec, codes)
    with b.building(WORD_FINGERPRINTS):
        grams, words = word_fingerprints(b, spec, codes)
    with b.building(SKIP_FINGERPRINTS):
        skips = skip_fingerprints(b, spec, words)
    with b.building(BUCKETS):
        words_block = _Families(grams.values + skips.values, grams.valid + skips.valid, grams.rows)
        char_block, word_block = buckets(b, spec, [chars, words_block])
    with b.building(FIELD_TOKENS):
        found = field_tokens(b, spec, fields.sellers_, fields.starts_.tolist())
    with b.building(HEAD_CHOICE):
        head = head_choice(b, tags, found.known)
    with b.building(BLOCK_SCORES):
        n_rows = b.shared[PADDED_ROWS]  # the stream's [N + 1]
        scores = [block_scores(b, spec, [char_block, word_block], head, n_rows, len(labels))]
        scores.append(field_scores(b, found.tokens, head, fields.width_))
    with b.building(PROBABILITIES):
        probabilities(b, scores, head, labels, b.op("Shape", ["title"]))
    return _model(b, len(labels), metadata)


def _model(b: _Builder, n_classes: int, metadata: Dict[str, str]) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("title", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("concatenated_tags", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info(SELLER, TensorProto.STRING, ["N"]),
    ] + [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"]) for name in NUMBER_FIELDS]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes]),
    ]
    graph = helper.make_graph(b.nodes, "elo7_categorizer", inputs, outputs + b.outputs, initializer=b.inits)
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
