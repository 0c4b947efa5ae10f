"""The one definition of the model's features.

A :class:`FeatureSpec` is plain data. It is realised twice: here, as the
analyzer that scikit-learn's ``HashingVectorizer`` calls during training, and
in :mod:`categorizer.onnx_graph`, as the ONNX graph that serves the model. The
parity tests pin the two together, so every rule below is chosen to be cheap
and exact in both worlds:

* folding is a per-character table (lower case, accents stripped, separators
  to a space, combining marks deleted) stored in the spec itself, so the
  result never depends on a locale or on the Unicode tables of the runtime;
* words are runs of characters that are not a space after folding;
* the text of a product is its title, a space, and its tags (empty when the
  client sends none), so tags speak the same vocabulary as titles;
* the normalised *stream* of a text is ``" " + "".join(w + " " for w in words)``;
  character n-grams are taken over that stream (so they see word edges);
* word n-grams use words cut to ``max_word_chars`` characters, because the
  graph builds words by doubling concatenations a fixed number of times.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Dict, Iterable, List, Optional, Tuple

# Code point blocks whose folding is fixed by the spec. Old, stable blocks only,
# so the table does not move between Python (Unicode) versions:
# Basic Latin .. Combining Diacritical Marks, Latin Extended Additional,
# General Punctuation (dashes, curly quotes, bullets, odd spaces).
FOLD_BLOCKS: Tuple[Tuple[int, int], ...] = (
    (0x0000, 0x036F),
    (0x1E00, 0x1EFF),
    (0x2000, 0x206F),
)

# Word n-grams are prefixed so that they never share a name (and so a hashed
# bucket) with a character n-gram: "|" folds to a space, so no character
# n-gram can contain it. Character n-grams, by far the most numerous, carry
# no prefix: the graph saves a string concatenation per feature.
WORD_PREFIX = "w|"

Doc = Tuple[str, str]


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
    """Everything that turns (title, tags) into hashed feature names."""

    # Width of the hashed feature space. 2**18 scored as well as 2**19 and 2**20
    # in validation, and keeps the float32 weight table (idf + six classes) at
    # 7.3 MB: a smaller file, and fewer cache misses when the graph gathers rows.
    n_features: int = 2**18
    # Character n-gram orders over the stream (spelling variants, plurals,
    # word stems); they carried most of the macro-F1 in validation.
    char_ngrams: Tuple[int, int] = (2, 5)
    # Word n-gram orders (bigrams catch "porta retrato", "chá de bebê").
    word_ngrams: Tuple[int, int] = (1, 2)
    # Words are cut to 2**5 characters: the graph doubles concatenations 5 times.
    max_word_chars: int = 32
    # Character folding table, stored rather than recomputed so that the model
    # file, not the runtime's Unicode version, decides what a character means.
    fold: Dict[str, str] = field(default_factory=default_fold_table)

    def __post_init__(self) -> None:
        if self.n_features <= 0 or self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features must be a power of two, got {self.n_features}")
        if self.max_word_chars & (self.max_word_chars - 1):
            raise ValueError(f"max_word_chars must be a power of two, got {self.max_word_chars}")
        for name in ("char_ngrams", "word_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be 1 <= low <= high, got {(low, high)}")
        if any(len(k) != 1 or len(v) > 1 for k, v in self.fold.items()):
            raise ValueError("fold maps single characters to at most one character")

    @property
    def doubling_steps(self) -> int:
        return self.max_word_chars.bit_length() - 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        for name in ("char_ngrams", "word_ngrams"):
            raw[name] = tuple(raw[name])
        return cls(**raw)

    # --- the Python realisation -------------------------------------------

    @cached_property
    def _translation(self) -> Dict[int, Optional[str]]:
        return {ord(k): (v or None) for k, v in self.fold.items()}

    def words(self, text: str) -> List[str]:
        folded = text.translate(self._translation)
        return [word for word in folded.split(" ") if word]

    def stream(self, words: Iterable[str]) -> str:
        return " " + "".join(word + " " for word in words)

    def analyze(self, doc: Doc) -> List[str]:
        """Feature names of one (title, tags) pair: the HashingVectorizer analyzer."""
        title, tags = doc
        words = self.words(title + " " + tags)
        features = _char_ngrams(self.stream(words), self.char_ngrams)
        cut = [word[: self.max_word_chars] for word in words]
        return features + _word_ngrams(WORD_PREFIX, cut, self.word_ngrams)


def _char_ngrams(stream: str, orders: Tuple[int, int]) -> List[str]:
    low, high = orders
    return [stream[start : start + n] for n in range(low, high + 1) for start in range(len(stream) - n + 1)]


def _word_ngrams(prefix: str, words: List[str], orders: Tuple[int, int]) -> List[str]:
    low, high = orders
    return [
        prefix + " ".join(words[start : start + n])
        for n in range(low, high + 1)
        for start in range(len(words) - n + 1)
    ]
