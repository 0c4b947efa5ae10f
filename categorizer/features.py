"""The one definition of the model's features, and the names of its stages.

A :class:`FeatureSpec` is plain data. It is realised twice, stage by stage
under the same names (STAGES): by :mod:`categorizer.sklearn_twin` for
training, and by :mod:`categorizer.onnx_graph` as the graph that serves the
model. tests/test_stage_parity.py pins each stage of one to the same stage of
the other, so every rule below is chosen to be cheap and exact in both worlds:

* folding is a per-character table (lower case, accents stripped, separators
  to a space, combining marks deleted) stored in the spec itself, so the
  result never depends on a locale or on the Unicode tables of the runtime;
* words are runs of characters that are not a space after folding;
* the text of a product is its title, a space, and its tags (empty when the
  client sends none), so tags speak the same vocabulary as titles;
* the *stream* of a text is the codes of ``" " + "".join(w + " " for w in words)``;
  character n-grams are taken over it (so they see word edges);
* word n-grams use words cut to ``max_word_chars`` characters;
* an n-gram is named by its *fingerprint*: a polynomial hash of its codes
  modulo 2**28, which the graph computes with integer arithmetic, never
  building a string per n-gram. Word n-grams start with the code WORD_MARK,
  which no folded text contains, so a word and a character n-gram share a
  fingerprint only by a hash collision;
* skip bigrams (two words one word apart) start with SKIP_MARK instead, so
  "a _ c" and the bigram "a c" are different features;
* a fingerprint's *bucket* is |MurmurHash3| (signed, seed 0) of its four
  7-bit groups as bytes, little end first, modulo the block's width: the
  hash scikit-learn's HashingVectorizer gave the fingerprint's name, a
  four-character ASCII string, when it realised this spec;
* character n-grams fall in the lower half of the feature space and word
  n-grams in the upper half (two blocks), so that each block can be
  l2-normalised on its own (see sklearn_twin.OccurrenceTfidf);
* the listing fields form a third block of *field tokens*, one per field and
  product, each worth a fixed value (no tf-idf, no norm). A field's first
  token means "unknown" and weighs nothing. The seller's other tokens are the
  sellers seen in training, in sorted order (a seller not seen is unknown);
  a number's are its bins: 1 + the count of the field's edges at or below
  it. An unknown number is NaN;
* so every field is optional: a product sent without fields is scored by
  its text alone.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import numpy as np

# Code point blocks whose folding is fixed by the spec. Old, stable blocks only,
# so the table does not move between Python (Unicode) versions:
# Basic Latin .. Combining Diacritical Marks, Latin Extended Additional,
# General Punctuation (dashes, curly quotes, bullets, odd spaces).
FOLD_BLOCKS: Tuple[Tuple[int, int], ...] = (
    (0x0000, 0x036F),
    (0x1E00, 0x1EFF),
    (0x2000, 0x206F),
)

# Fingerprints are taken modulo 2**28, so that the product of two of them (or of
# one and a 21-bit code) stays far below int64 overflow in the graph.
FINGERPRINT_BITS = 28
FINGERPRINT_MASK = (1 << FINGERPRINT_BITS) - 1
# The code of a space, and of every character beyond the Basic Multilingual
# Plane (emoji and rare scripts): one shared code keeps the graph's character
# table to the BMP.
SPACE = 0x20
OTHER = 0x110000
# Highest n-gram order: the graph reads an n-gram through shifts of n - 1 places
# of one padded copy, which is that long.
MAX_NGRAM_ORDER = 64
# First code of every word n-gram; folding turns control characters into
# spaces, so no character n-gram contains it.
WORD_MARK = 0x01
# First code of every skip bigram, for the same reason.
SKIP_MARK = 0x02
# Version of what a spec means beyond its fields. 2: character and word n-grams
# in separate blocks, each with its own norm. 3: the skip_bigrams field. 4: the
# listing fields' block. A file exported under another version may read as the
# same fields but hold a different model, so loading it must fail.
FORMAT_VERSION = 4

# The listing fields, by their names as model inputs (and as columns of the
# training file). The seller is a string, the others numbers; all optional.
SELLER = "seller_id"
PRICE = "price"
WEIGHT = "weight"
MINIMUM_QUANTITY = "minimum_quantity"
EXPRESS_DELIVERY = "express_delivery"
NUMBER_FIELDS = (PRICE, WEIGHT, MINIMUM_QUANTITY, EXPRESS_DELIVERY)
LISTING_FIELDS = (SELLER, *NUMBER_FIELDS)
# What each number means, for the file's metadata and the docs.
UNITS = {
    PRICE: "reais (BRL)",
    WEIGHT: "grams",
    MINIMUM_QUANTITY: "units per order",
    EXPRESS_DELIVERY: "1 if the seller offers express delivery, else 0",
}

# The stages both realisations build, in order, under these names: the
# graph's nodes carry them (its cost profile groups by them), the builder can
# expose any of them as outputs, and each has its own parity test.
STREAM = "stream"
CHAR_FINGERPRINTS = "char_fingerprints"
WORD_FINGERPRINTS = "word_fingerprints"
SKIP_FINGERPRINTS = "skip_fingerprints"
BUCKETS = "buckets"
FIELD_TOKENS = "field_tokens"
HEAD_CHOICE = "head_choice"
BLOCK_SCORES = "block_scores"
PROBABILITIES = "probabilities"
STAGES = (
    STREAM,
    CHAR_FINGERPRINTS,
    WORD_FINGERPRINTS,
    SKIP_FINGERPRINTS,
    BUCKETS,
    FIELD_TOKENS,
    HEAD_CHOICE,
    BLOCK_SCORES,
    PROBABILITIES,
)

Doc = Tuple[str, str]


def log_edges(low: int, high: int, per_octave: int) -> Tuple[float, ...]:
    """Bin edges 2**(k / per_octave) for k from low to high: bins of equal ratio,
    each edge rounded to float32, the type the graph compares numbers in."""
    return tuple(float(np.float32(2.0 ** (k / per_octave))) for k in range(low, high + 1))


def default_number_edges() -> Dict[str, Tuple[float, ...]]:
    """Each number field's bin edges: prices, weights and quantities on a log scale
    (a bin per factor of sqrt 2, from 1/8 to 65,536), express delivery yes or no."""
    scale = log_edges(-6, 32, 2)
    return {PRICE: scale, WEIGHT: (0.0, *scale), MINIMUM_QUANTITY: (0.0, *scale), EXPRESS_DELIVERY: (0.5,)}


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _fold_char(ch: str) -> str:
    """What one character becomes: "" (deleted), " " (separator) or one char."""
    if unicodedata.combining(ch):
        return ""
    if not ch.isalnum():
        return " "
    folded = _strip_marks(ch.lower())
    if len(folded) == 1:
        return folded
    lowered = ch.lower()
    return lowered if len(lowered) == 1 else ch


def default_fold_table() -> Dict[str, str]:
    """Every character of FOLD_BLOCKS that folding changes, mapped to its fold."""
    table = {}
    for start, end in FOLD_BLOCKS:
        for code in range(start, end + 1):
            ch = chr(code)
            folded = _fold_char(ch)
            if folded != ch:
                table[ch] = folded
    return table


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that turns (title, tags) into the buckets of its hashed n-grams."""

    # Width of the hashed feature space, both blocks together: the smallest that
    # scored as well as wider ones (docs/decisions.md, "Hashing into 2¹⁸ buckets").
    n_features: int = 2**18
    # Character n-gram orders over the stream (spelling variants, plurals,
    # word stems): they carry most of the accuracy.
    char_ngrams: Tuple[int, int] = (2, 5)
    # Word n-gram orders (bigrams catch "porta retrato", "chá de bebê").
    word_ngrams: Tuple[int, int] = (1, 2)
    # Pairs of words one word apart ("kit _ bebe" in "kit chá bebê"): they link a
    # product word to a theme across a filler (docs/decisions.md, "Skip bigrams").
    skip_bigrams: bool = True
    # Words are cut to this many characters for word n-grams: longer "words" are
    # codes or run-together text, and the graph gathers a fixed-width window.
    max_word_chars: int = 32
    # Odd multiplier of the fingerprint polynomial (any odd number works; a
    # large one spreads short n-grams over the 28 bits).
    fingerprint_base: int = 1_000_003
    # Character folding table, stored rather than recomputed so that the model
    # file, not the runtime's Unicode version, decides what a character means.
    fold: Dict[str, str] = field(default_factory=default_fold_table)
    # Value of the seller's token: how much a seller's history may weigh against
    # the text (docs/decisions.md, "The seller as a token"). A power of two, so
    # that the file's table of value * coefficient reads back exactly.
    seller_value: float = 2.0
    # Value of each number's token (a power of two, for the same reason).
    number_value: float = 1.0
    # Bin edges of each number field (ascending, float32 values): a number's bin
    # is the count of edges at or below it, so bins run from 0 to len(edges).
    number_edges: Dict[str, Tuple[float, ...]] = field(default_factory=default_number_edges)
    # FORMAT_VERSION when written; checked when read back from a model file.
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported: this code realises "
                f"version {FORMAT_VERSION}; retrain the model with it"
            )
        if self.n_features < 2 or self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features must be a power of two, at least 2, got {self.n_features}")
        if self.max_word_chars < 1:
            raise ValueError(f"max_word_chars must be positive, got {self.max_word_chars}")
        if not 0 < self.fingerprint_base <= FINGERPRINT_MASK or self.fingerprint_base % 2 == 0:
            raise ValueError(f"fingerprint_base must be odd and below 2**28, got {self.fingerprint_base}")
        for name in ("char_ngrams", "word_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high <= MAX_NGRAM_ORDER:
                raise ValueError(f"{name} must be 1 <= low <= high <= {MAX_NGRAM_ORDER}, got {(low, high)}")
        if any(len(k) != 1 or len(v) > 1 for k, v in self.fold.items()):
            raise ValueError("fold maps single characters to at most one character")
        if any(codes(k + v) != [ord(c) for c in k + v] for k, v in self.fold.items()):
            raise ValueError("fold maps characters of the Basic Multilingual Plane only (no surrogates)")
        self._check_fields()

    def _check_fields(self) -> None:
        for name in ("seller_value", "number_value"):
            value = getattr(self, name)
            if not value > 0 or np.frexp(value)[0] != 0.5:
                raise ValueError(f"{name} must be a positive power of two, got {value}")
        if sorted(self.number_edges) != sorted(NUMBER_FIELDS):
            raise ValueError(f"number_edges must give the edges of {list(NUMBER_FIELDS)} and no other field")
        for name, edges in self.number_edges.items():
            values = np.asarray(edges, dtype=np.float64)
            exact = np.array_equal(values.astype(np.float32), values) and np.isfinite(values).all()
            if not len(values) or not exact or (np.diff(values) <= 0).any():
                raise ValueError(f"number_edges[{name!r}] must be ascending finite float32 values")

    def power(self, k: int) -> int:
        """fingerprint_base ** k modulo 2**28."""
        return pow(self.fingerprint_base, k, 1 << FINGERPRINT_BITS)

    def max_word_ngram_chars(self) -> int:
        """Longest word n-gram or skip bigram fingerprinted: the mark, the words, the spaces."""
        words = max(self.word_ngrams[1], 2 if self.skip_bigrams else 0)
        return words * (self.max_word_chars + 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        # Specs written before the field existed are version 1 (one block).
        raw.setdefault("format_version", 1)
        for name in ("char_ngrams", "word_ngrams"):
            raw[name] = tuple(raw[name])
        if "number_edges" in raw:
            raw["number_edges"] = {k: tuple(v) for k, v in raw["number_edges"].items()}
        return cls(**raw)

    @cached_property
    def translation(self) -> Dict[int, Optional[str]]:
        """The fold as a str.translate table (a deleted character maps to None)."""
        return {ord(k): (v or None) for k, v in self.fold.items()}

    @cached_property
    def powers(self) -> List[int]:
        """fingerprint_base ** k modulo 2**28, for every k an n-gram of the spec reaches."""
        return [self.power(k) for k in range(max(self.char_ngrams[1], self.max_word_ngram_chars()) + 1)]

    @property
    def number_tokens(self) -> Dict[str, int]:
        """Tokens of each number field: unknown, then one bin more than its edges."""
        return {name: len(edges) + 2 for name, edges in self.number_edges.items()}

    @property
    def block_width(self) -> int:
        """Buckets per block: characters in [0, width), words in [width, n_features)."""
        return self.n_features // 2


def codes(text: str) -> List[int]:
    """Code of each character of folded text: its code point, OTHER beyond the BMP."""
    return [code if code < 0xD800 or 0xE000 <= code < 0x10000 else OTHER for code in map(ord, text)]
