"""Modelling: hashed features, tf-idf with occurrence l2 norms per block, SGD logistic regression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from categorizer import prepare
from categorizer.features import Doc, FeatureSpec

# Fixed so that retraining on the same data reproduces the artifact exactly.
RANDOM_STATE = 0


@dataclass(frozen=True)
class TrainConfig:
    """SGD settings; the notebook explains the choice."""

    # L2 penalty: strong enough to keep rare hashed n-grams from dominating.
    alpha: float = 3e-6
    # Full passes over the data; tol=None runs them all, for reproducibility.
    max_iter: int = 50
    # "balanced" re-weights the 19:1 class imbalance, which macro-F1 rewards.
    class_weight: Optional[str] = "balanced"
    # Weight of a search query as a title-only example, times the share of its
    # rows in the category (see prepare.query_shares). Below one because a
    # query is noisier than a title; 0.1 to 0.5 all added about 0.003
    # macro-F1 on titles in 5-fold grouped validation.
    query_weight: float = 0.5


def vectorizer(spec: FeatureSpec) -> FeatureUnion:
    """The scikit-learn realisation of `spec` (the ONNX one is onnx_graph): the
    character block's buckets, then the word block's."""
    return FeatureUnion(
        [("chars", _hashing(spec.analyze_chars, spec)), ("words", _hashing(spec.analyze_words, spec))]
    )


def _hashing(analyzer: Callable[[Doc], List[str]], spec: FeatureSpec) -> HashingVectorizer:
    return HashingVectorizer(
        analyzer=analyzer,
        n_features=spec.block_width,
        # Counts, not signed sums: tf-idf needs them.
        alternate_sign=False,
        norm=None,
        dtype=np.float64,
    )


class OccurrenceTfidf(TfidfTransformer):  # type: ignore[misc]
    """tf-idf on raw counts, each block l2-normalised as if no n-gram repeated within a row.

    A block's squared norm is the sum of idf**2 over the row's n-gram
    *occurrences* in it (``sum_b count_b * idf_b**2``); it equals the ordinary
    l2 norm when nothing repeats. It is linear in the occurrences, so the
    serving graph sums per occurrence and never has to count repeated buckets
    per row: that count (a sort) was the graph's largest cost. In validation
    it scored like sublinear tf + l2 on titles and 0.002 macro-F1 lower with
    tags.

    Normalising the character and word blocks each on its own (columns below
    and from `block_width`) keeps the many character n-grams of a row from
    drowning its few words. In 5-fold grouped validation it added 0.002
    macro-F1 on titles and 0.005 with tags over one norm for both.
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


def docs(titles: Sequence[str], tags: Optional[Sequence[str]] = None) -> List[Doc]:
    """(title, tags) pairs; no tags means the title-only view."""
    return list(zip(titles, tags if tags is not None else [""] * len(titles)))


def training_views(frame: pd.DataFrame) -> tuple[List[Doc], np.ndarray]:
    """Every product twice: title only (what most clients send) and title + tags."""
    titles = frame["title"].tolist()
    both = docs(titles) + docs(titles, frame["concatenated_tags"].tolist())
    return both, np.concatenate([frame["category"].to_numpy()] * 2)


def training_examples(rows: pd.DataFrame, query_weight: float) -> Tuple[List[Doc], np.ndarray, np.ndarray]:
    """(docs, categories, sample weights): both views of each distinct product,
    weight one, then each search query as a title, weighted by its category share."""
    batch, target = training_views(prepare.deduplicate(rows))
    queries = prepare.query_shares(rows)
    weights = np.concatenate([np.ones(len(batch)), query_weight * queries["share"].to_numpy()])
    target = np.concatenate([target, queries["category"].to_numpy()])
    return batch + docs(queries["query"].tolist()), target, weights


@dataclass
class Model:
    """The fitted pipeline, with weights exactly as the ONNX file stores them."""

    spec: FeatureSpec
    pipeline: Pipeline

    @property
    def tfidf(self) -> OccurrenceTfidf:
        step: OccurrenceTfidf = self.pipeline.named_steps["tfidf"]
        return step

    @property
    def classifier(self) -> SGDClassifier:
        return self.pipeline.named_steps["sgd"]

    @property
    def labels(self) -> List[str]:
        return [str(label) for label in self.classifier.classes_]

    def predict_proba(self, batch: Sequence[Doc]) -> np.ndarray:
        proba: np.ndarray = self.pipeline.predict_proba(batch)
        return proba

    def predict(self, batch: Sequence[Doc]) -> np.ndarray:
        labels: np.ndarray = self.pipeline.predict(batch)
        return labels


def pipeline(spec: FeatureSpec, config: TrainConfig) -> Pipeline:
    classifier = SGDClassifier(
        loss="log_loss",
        alpha=config.alpha,
        max_iter=config.max_iter,
        tol=None,
        class_weight=config.class_weight,
        random_state=RANDOM_STATE,
    )
    tfidf = OccurrenceTfidf(spec.block_width, smooth_idf=True)
    return Pipeline([("hashing", vectorizer(spec)), ("tfidf", tfidf), ("sgd", classifier)])


DEFAULT_CONFIG = TrainConfig()


def fit(rows: pd.DataFrame, spec: FeatureSpec, config: TrainConfig = DEFAULT_CONFIG) -> Model:
    """Train on the cleaned listing `rows` (one per search, as published)."""
    batch, target, weights = training_examples(rows, config.query_weight)
    model = Model(spec, pipeline(spec, config).fit(batch, target, sgd__sample_weight=weights))
    # The ONNX file stores float32 idf and coefficients; use exactly those here
    # too, so scikit-learn and onnxruntime score with the same numbers.
    model.tfidf.idf_ = as_float32(model.tfidf.idf_)
    model.classifier.coef_ = as_float32(model.classifier.coef_)
    return model


def from_weights(
    spec: FeatureSpec, idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray, labels: Sequence[str]
) -> Model:
    """A 'fitted' pipeline from known weights (an exported file's, or test values).

    `coef` is ``[n_classes, n_features]``; idf and coef should already be the
    float32-rounded values the ONNX file stores.
    """
    fitted = pipeline(spec, DEFAULT_CONFIG)
    fitted.named_steps["tfidf"].idf_ = np.asarray(idf, dtype=np.float64)
    classifier = fitted.named_steps["sgd"]
    classifier.coef_ = np.ascontiguousarray(coef, dtype=np.float64)
    classifier.intercept_ = np.asarray(intercept, dtype=np.float64)
    classifier.classes_ = np.array(list(labels), dtype=object)
    classifier.n_features_in_ = spec.n_features
    return Model(spec, fitted)


def as_float32(weights: np.ndarray) -> np.ndarray:
    """float32-rounded values, kept in float64 arrays as scikit-learn expects."""
    rounded: np.ndarray = weights.astype(np.float32).astype(np.float64)
    return rounded
