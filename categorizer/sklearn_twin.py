"""The scikit-learn realisation of the feature spec and scoring, stage by stage.

Each stage here has a namesake in :mod:`categorizer.onnx_graph` that builds it
as ONNX nodes (features.STAGES lists them); tests/test_stage_parity.py holds
each pair together. Training runs this side: :class:`NgramCounts` (stream to
buckets) and :class:`OccurrenceTfidf` are the first steps of a head's
scikit-learn pipeline, and the head's SGDClassifier is the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.utils import murmurhash3_32

from categorizer.features import (
    FINGERPRINT_MASK,
    NUMBER_FIELDS,
    SKIP_MARK,
    SPACE,
    WORD_MARK,
    Doc,
    FeatureSpec,
    codes,
)
from categorizer.heads import heads_of

T = TypeVar("T")

# --- stream -------------------------------------------------------------------


def words(spec: FeatureSpec, text: str) -> List[str]:
    """The folded words of a text (runs of characters that are not a space)."""
    return [word for word in text.translate(spec.translation).split(" ") if word]


def doc_words(spec: FeatureSpec, doc: Doc) -> List[str]:
    """The words of a product: its title's, then its tags'."""
    title, tags = doc
    return words(spec, title + " " + tags)


def stream_text(word_list: Sequence[str]) -> str:
    """' w1 w2 ... ': the words, each followed by a space, after one space."""
    return " " + "".join(word + " " for word in word_list)


def stream(spec: FeatureSpec, doc: Doc) -> List[int]:
    """STREAM: the codes of a product's stream."""
    return codes(stream_text(doc_words(spec, doc)))


# --- fingerprints ---------------------------------------------------------------


def char_fingerprints(spec: FeatureSpec, stream_codes: List[int]) -> List[int]:
    """CHAR_FINGERPRINTS: every character n-gram of the stream, by start then order."""
    low, high = spec.char_ngrams
    powers, out = spec.powers, []
    for start in range(len(stream_codes)):
        fp = 0
        for n in range(1, min(high, len(stream_codes) - start) + 1):
            fp = (fp + stream_codes[start + n - 1] * powers[n - 1]) & FINGERPRINT_MASK
            if n >= low:
                out.append(fp)
    return out


def cut_words(spec: FeatureSpec, stream_codes: List[int]) -> List[List[int]]:
    """The stream's words (runs between spaces), each cut to max_word_chars codes."""
    found, word = [], []
    for code in stream_codes:
        if code != SPACE:
            word.append(code)
        elif word:
            found.append(word[: spec.max_word_chars])
            word = []
    return found


def word_fingerprints(spec: FeatureSpec, stream_codes: List[int]) -> List[int]:
    """WORD_FINGERPRINTS: every word n-gram, the polynomial of WORD_MARK + "w1 w2 ..."."""
    return _word_ngrams(spec, cut_words(spec, stream_codes))


def _word_ngrams(spec: FeatureSpec, cut: List[List[int]]) -> List[int]:
    low, high = spec.word_ngrams
    powers, out = spec.powers, []
    for start in range(len(cut)):
        fp, length = WORD_MARK, 1
        for n in range(1, min(high, len(cut) - start) + 1):
            if n > 1:
                fp += SPACE * powers[length]
                length += 1
            for code in cut[start + n - 1]:
                fp = (fp + code * powers[length]) & FINGERPRINT_MASK
                length += 1
            if n >= low:
                out.append(fp & FINGERPRINT_MASK)
    return out


def skip_fingerprints(spec: FeatureSpec, stream_codes: List[int]) -> List[int]:
    """SKIP_FINGERPRINTS: every pair of words one word apart, the polynomial of SKIP_MARK + "w1 w3"."""
    return _skip_bigrams(spec, cut_words(spec, stream_codes))


def _skip_bigrams(spec: FeatureSpec, cut: List[List[int]]) -> List[int]:
    if not spec.skip_bigrams:
        return []
    powers, out = spec.powers, []
    for first, last in zip(cut, cut[2:]):
        fp = SKIP_MARK
        for length, code in enumerate([*first, SPACE, *last], start=1):
            fp = (fp + code * powers[length]) & FINGERPRINT_MASK
        out.append(fp)
    return out


# --- buckets --------------------------------------------------------------------

# Block of each family of n-grams: characters in the lower half, words above.
CHAR_BLOCK = 0
WORD_BLOCK = 1


def spread(fingerprints: np.ndarray) -> np.ndarray:
    """The 28 bits as four 7-bit bytes, little end first: the int32 whose bytes are
    the fingerprint's four-character ASCII name."""
    fps = np.asarray(fingerprints, dtype=np.int64)
    out = fps & 0x7F
    for byte in (1, 2, 3):
        out = out + ((fps & (0x7F << (7 * byte))) << byte)
    return out


def buckets(spec: FeatureSpec, fingerprints: np.ndarray) -> np.ndarray:
    """BUCKETS: each fingerprint's bucket within its block, |MurmurHash3| of its name."""
    hashed = murmurhash3_32(spread(fingerprints).astype(np.int32), seed=0, positive=False)
    # abs in int64, so that -2**31 maps as HashingVectorizer maps it.
    out: np.ndarray = np.abs(np.asarray(hashed, dtype=np.int64)) % spec.block_width
    return out


def block_fingerprints(spec: FeatureSpec, doc: Doc) -> Tuple[List[int], List[int]]:
    """The fingerprints of the character block, then of the word block, of one product."""
    codes_ = stream(spec, doc)
    cut = cut_words(spec, codes_)
    return char_fingerprints(spec, codes_), _word_ngrams(spec, cut) + _skip_bigrams(spec, cut)


class NgramCounts(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Stream to buckets: how often each bucket occurs in each product, [N, n_features].

    The character block fills columns [0, block_width), the word block the rest.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    def fit(self, batch: Sequence[Doc], y: Optional[np.ndarray] = None) -> NgramCounts:
        return self

    def transform(self, batch: Sequence[Doc]) -> sp.csr_matrix:
        blocks: Tuple[_Places, _Places] = (_Places(), _Places())
        for doc in batch:
            for places, fps in zip(blocks, block_fingerprints(self.spec, doc)):
                places.add(fps)
        rows = np.concatenate([places.row_ids() for places in blocks])
        columns = np.concatenate(
            [
                buckets(self.spec, places.fingerprints()) + b * self.spec.block_width
                for b, places in enumerate(blocks)
            ]
        )
        # A COO matrix sums repeated (row, column) pairs when made CSR: the counts.
        counts = sp.coo_matrix(
            (np.ones(len(columns)), (rows, columns)), shape=(len(batch), self.spec.n_features)
        )
        return counts.tocsr()


class _Places:
    """One block's fingerprints across a batch, and the row of each."""

    def __init__(self) -> None:
        self.fps: List[int] = []
        self.sizes: List[int] = []

    def add(self, fps: List[int]) -> None:
        """The next row's fingerprints."""
        self.fps.extend(fps)
        self.sizes.append(len(fps))

    def fingerprints(self) -> np.ndarray:
        return np.array(self.fps, dtype=np.int64)

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.sizes), dtype=np.int64), self.sizes)


# --- field tokens ---------------------------------------------------------------

# A field's token for "unknown": the first of its tokens, which weighs nothing.
UNKNOWN = 0


@dataclass(frozen=True)
class Fields:
    """The listing fields of a batch of products, a column each: the sellers
    ("" unknown) and the numbers, [N, len(NUMBER_FIELDS)] float32 (NaN unknown)."""

    sellers: Tuple[str, ...]
    numbers: np.ndarray

    def __post_init__(self) -> None:
        if self.numbers.shape != (len(self.sellers), len(NUMBER_FIELDS)):
            raise ValueError(
                f"numbers must be [{len(self.sellers)}, {len(NUMBER_FIELDS)}], got {self.numbers.shape}"
            )
        if self.numbers.dtype != np.float32:
            raise ValueError(f"numbers must be float32 (the graph's input type), got {self.numbers.dtype}")

    @classmethod
    def of(cls, sellers: Sequence[str], numbers: Mapping[str, Sequence[float]]) -> Fields:
        """From a seller column and a column per number field (a field left out is unknown)."""
        rows = len(sellers)
        table = np.full((rows, len(NUMBER_FIELDS)), np.nan, dtype=np.float32)
        for column, name in enumerate(NUMBER_FIELDS):
            if name in numbers:
                table[:, column] = np.asarray(numbers[name], dtype=np.float64)
        return cls(tuple(sellers), table)

    @classmethod
    def unknown(cls, rows: int) -> Fields:
        """Every field unknown for `rows` products: the text-only view."""
        return cls.of([""] * rows, {})

    def __len__(self) -> int:
        return len(self.sellers)

    def take(self, rows: Sequence[int]) -> Fields:
        return Fields(tuple(self.sellers[i] for i in rows), self.numbers[np.asarray(rows, dtype=np.intp)])

    def concat(self, other: Fields) -> Fields:
        return Fields(self.sellers + other.sellers, np.concatenate([self.numbers, other.numbers]))

    def dropped(self, rate: float, seed: int) -> Fields:
        """These fields with each field of each product made unknown with probability `rate`."""
        drop = np.random.default_rng(seed).random((len(self), 1 + self.numbers.shape[1])) < rate
        sellers = tuple("" if gone else seller for seller, gone in zip(self.sellers, drop[:, 0]))
        return Fields(sellers, np.where(drop[:, 1:], np.float32(np.nan), self.numbers))


class FieldTokens(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """The field block: each product's token per field, [N, width_] worth the
    spec's values (an unknown field's token has no column value).

    Tokens are laid out field after field: the seller's (unknown, then the
    sellers seen in fit, sorted), then each number field's (unknown, then its
    bins). The graph's table has one row per token, in this order.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    def fit(self, fields: Fields, y: Optional[np.ndarray] = None) -> FieldTokens:
        return self.set_sellers(sorted({seller for seller in fields.sellers if seller}))

    def set_sellers(self, sellers: Sequence[str]) -> FieldTokens:
        """Fitted with these seller tokens (a file's, read back), in this order."""
        if "" in sellers:
            raise ValueError('"" is the unknown seller, not a seller token')
        self.sellers_ = tuple(sellers)
        return self

    @property
    def starts_(self) -> np.ndarray:
        """Each field's first token (its unknown), seller first."""
        sizes = [1 + len(self.sellers_)] + [self.spec.number_tokens[name] for name in NUMBER_FIELDS]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def width_(self) -> int:
        return 1 + len(self.sellers_) + sum(self.spec.number_tokens.values())

    def values_(self) -> np.ndarray:
        """Each token's value: 0 for the unknowns, else its field's value from the spec."""
        values = np.full(self.width_, self.spec.number_value)
        values[: 1 + len(self.sellers_)] = self.spec.seller_value
        values[self.starts_] = 0.0
        return values

    def tokens(self, fields: Fields) -> np.ndarray:
        """FIELD_TOKENS: [N, 1 + len(NUMBER_FIELDS)] int64, each field's token of each product."""
        tokens: np.ndarray = field_tokens(self.spec, self.sellers_, fields) + self.starts_
        return tokens

    def known(self, fields: Fields) -> np.ndarray:
        """Whether each product has a field the model can use: a token not unknown."""
        known: np.ndarray = (self.tokens(fields) != self.starts_).any(axis=1)
        return known

    def transform(self, fields: Fields) -> sp.csr_matrix:
        tokens = self.tokens(fields)
        values = self.values_()[tokens]
        rows = np.repeat(np.arange(len(fields)), tokens.shape[1])
        matrix = sp.csr_matrix((values.ravel(), (rows, tokens.ravel())), shape=(len(fields), self.width_))
        matrix.eliminate_zeros()
        return matrix


def field_tokens(spec: FeatureSpec, sellers: Sequence[str], fields: Fields) -> np.ndarray:
    """Each field's token of each product, counted from the field's own first
    token (UNKNOWN): the seller's place in `sellers` plus one, a number's bin."""
    known = {seller: i + 1 for i, seller in enumerate(sellers)}
    seller = np.array([known.get(s, UNKNOWN) for s in fields.sellers], dtype=np.int64)
    numbers = [_bins(spec.number_edges[name], fields.numbers[:, i]) for i, name in enumerate(NUMBER_FIELDS)]
    return np.column_stack([seller, *numbers]).reshape(len(fields), 1 + len(NUMBER_FIELDS))


def _bins(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """1 + the count of edges at or below each value, UNKNOWN for NaN (float32 compares)."""
    bins = 1 + np.searchsorted(np.asarray(edges, dtype=np.float32), values, side="right")
    out: np.ndarray = np.where(np.isnan(values), UNKNOWN, bins).astype(np.int64)
    return out


# --- head choice ----------------------------------------------------------------


def head_choice(batch: Sequence[Doc], fields_known: Optional[np.ndarray] = None) -> np.ndarray:
    """HEAD_CHOICE: the head that scores each product (the rule is heads.head_of);
    fields_known is FieldTokens.known of the products' fields (None: none known)."""
    return heads_of(batch, fields_known)


# --- block scores ---------------------------------------------------------------


class OccurrenceTfidf(TfidfTransformer):  # type: ignore[misc]
    """tf-idf on raw counts, each block l2-normalised as if no n-gram repeated within a row.

    A block's squared norm is the sum of idf**2 over the row's n-gram
    *occurrences* in it (``sum_b count_b * idf_b**2``); it equals the ordinary
    l2 norm when nothing repeats. It is linear in the occurrences, so the
    serving graph sums per occurrence and never has to count repeated buckets
    per row: that count (a sort) was the graph's largest cost (docs/decisions.md,
    "tf-idf with an occurrence l2 norm").

    Normalising the character and word blocks each on its own (columns below
    and from `block_width`) keeps the many character n-grams of a row from
    drowning its few words.
    """

    def __init__(self, block_width: int, smooth_idf: bool = True) -> None:
        super().__init__(norm=None, use_idf=True, smooth_idf=smooth_idf, sublinear_tf=False)
        self.block_width = block_width

    def transform(self, X: sp.spmatrix, copy: bool = True) -> sp.csr_matrix:
        if X.shape[1] != 2 * self.block_width:
            raise ValueError(f"expected 2 blocks of {self.block_width} columns, got {X.shape[1]} columns")
        counts = sp.csr_matrix(X, dtype=np.float64)
        weighted = sp.csr_matrix(super().transform(counts, copy=True))
        rows, blocks = self._cells(counts)
        squares = np.zeros((counts.shape[0], 2))
        np.add.at(squares, (rows, blocks), counts.data * np.square(self.idf_)[counts.indices])
        norms = np.sqrt(squares)
        norms[norms == 0.0] = 1.0  # an empty block stays zero, as with l2
        weighted.data = weighted.data / norms[self._cells(weighted)]
        return weighted

    def _cells(self, matrix: sp.csr_matrix) -> Tuple[np.ndarray, np.ndarray]:
        """(row, block) of each stored value: block 0 for characters, 1 for words."""
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        return rows, (matrix.indices >= self.block_width).astype(np.intp)


def block_scores(
    tfidf: OccurrenceTfidf, sgd: SGDClassifier, counts: sp.csr_matrix, field_tokens: sp.csr_matrix
) -> List[np.ndarray]:
    """BLOCK_SCORES: each block's row dotted with its coefficients, [N, n_classes] per
    block: the characters' and the words' tf-idf, then the field tokens (FieldTokens).

    Their sum plus the intercept is the classifier's decision function; its
    predict_proba (one-vs-rest sigmoids over their sum) is PROBABILITIES.
    """
    weighted = tfidf.transform(counts)
    width = tfidf.block_width
    text = [
        np.asarray(weighted[:, cols] @ sgd.coef_[:, cols].T)
        for cols in (slice(0, width), slice(width, 2 * width))
    ]
    return [*text, np.asarray(field_tokens @ sgd.coef_[:, 2 * width :].T)]


# --- for people -------------------------------------------------------------------


def ngrams(spec: FeatureSpec, doc: Doc) -> Dict[str, List[str]]:
    """The n-grams behind the fingerprints, as text, per family and in the stages' order.

    For people: fingerprints are unreadable. Skip bigrams read "kit _ bebe".
    """
    found = doc_words(spec, doc)
    cut = [word[: spec.max_word_chars] for word in found]
    families = {
        "characters": ["".join(gram) for gram in _windows(stream_text(found), spec.char_ngrams)],
        "words": [" ".join(gram) for gram in _windows(cut, spec.word_ngrams)],
    }
    if spec.skip_bigrams:
        families["skip bigrams"] = [f"{first} _ {last}" for first, last in zip(cut, cut[2:])]
    return families


def _windows(items: Sequence[T], orders: Tuple[int, int]) -> List[Sequence[T]]:
    """Every run of `orders` (low, high) consecutive items, by start then length."""
    low, high = orders
    return [items[s : s + n] for s in range(len(items)) for n in range(low, min(high, len(items) - s) + 1)]
