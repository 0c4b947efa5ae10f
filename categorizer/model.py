"""Modelling: hashed features, tf-idf with occurrence l2 norms per block, SGD logistic regression.

Two heads share the features: one scores products sent without tags, the
other products sent with them (see heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline

from categorizer import prepare
from categorizer.features import Doc, FeatureSpec
from categorizer.heads import N_HEADS, TAGS_HEAD, TITLE_HEAD, heads_of
from categorizer.sklearn_twin import NgramCounts, OccurrenceTfidf, block_scores
from categorizer.weights import HeadWeights, round_weights

# Fixed so that retraining on the same data reproduces the artifact exactly.
RANDOM_STATE = 0


@dataclass(frozen=True)
class TrainConfig:
    """SGD settings; the notebook explains the choice."""

    # L2 penalty: strong enough to keep rare hashed n-grams from dominating.
    alpha: float = 3e-6
    # Full passes over the data; tol=None runs them all, for reproducibility.
    max_iter: int = 50
    # "balanced" counts the small classes as macro-F1 does (see docs/decisions.md,
    # 'SGD logistic regression, balanced class weights').
    class_weight: Optional[str] = "balanced"
    # Weight of a search query as a title-only example, times the share of its
    # rows in the category (see prepare.query_shares). Below one because a
    # query is noisier than a title (see docs/decisions.md, 'Search queries as
    # title-only examples').
    query_weight: float = 0.5
    # Weight of each product's tags alone as an example, for the tags head only,
    # since in one model it cost titles (see docs/decisions.md, 'Two heads').
    tags_only_weight: float = 1.0


@dataclass
class Model:
    """The fitted heads, with weights exactly as the ONNX file stores them.

    Both heads read the same features; heads.head_of says which one scores a
    product, and why there are two.
    """

    spec: FeatureSpec
    heads: Tuple[Pipeline, Pipeline]

    def tfidf(self, head: int) -> OccurrenceTfidf:
        step: OccurrenceTfidf = self.heads[head].named_steps["tfidf"]
        return step

    def classifier(self, head: int) -> SGDClassifier:
        return self.heads[head].named_steps["sgd"]

    @property
    def labels(self) -> List[str]:
        return [str(label) for label in self.classifier(TITLE_HEAD).classes_]

    def predict_proba(self, batch: Sequence[Doc]) -> np.ndarray:
        proba = np.zeros((len(batch), len(self.labels)))
        for head, rows in self._routes(batch):
            proba[rows] = self.heads[head].predict_proba([batch[i] for i in rows])
        return proba

    def predict(self, batch: Sequence[Doc]) -> np.ndarray:
        labels = np.empty(len(batch), dtype=object)
        for head, rows in self._routes(batch):
            labels[rows] = self.heads[head].predict([batch[i] for i in rows])
        return labels

    def block_scores(self, batch: Sequence[Doc]) -> List[np.ndarray]:
        """The BLOCK_SCORES stage: per block, each product's [n_classes] scores from its head."""
        out = [np.zeros((len(batch), len(self.labels))) for _ in range(2)]
        for head, rows in self._routes(batch):
            counts = self.heads[head].named_steps["counts"].transform([batch[i] for i in rows])
            for block, scores in zip(out, block_scores(self.tfidf(head), self.classifier(head), counts)):
                block[rows] = scores
        return out

    def _routes(self, batch: Sequence[Doc]) -> List[Tuple[int, np.ndarray]]:
        """(head, row indices) for each head that scores some of the batch."""
        heads = heads_of(batch)
        routes = [(head, np.flatnonzero(heads == head)) for head in (TITLE_HEAD, TAGS_HEAD)]
        return [(head, rows) for head, rows in routes if rows.size]


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
    return Pipeline([("counts", NgramCounts(spec)), ("tfidf", tfidf), ("sgd", classifier)])


DEFAULT_CONFIG = TrainConfig()


def fit(rows: pd.DataFrame, spec: FeatureSpec, config: TrainConfig = DEFAULT_CONFIG) -> Model:
    """Train both heads on the cleaned listing `rows` (one per search, as published)."""
    title_batch, title_target, title_weights = prepare.training_examples(rows, config.query_weight)
    batch, target, weights = prepare.training_examples(rows, config.query_weight, config.tags_only_weight)
    # The title head's examples are the tags head's without the tags-only ones,
    # which come last: hash every text once (hashing is most of the training time).
    n_title = len(title_batch)
    if batch[:n_title] != title_batch:
        raise AssertionError("the title head's examples must lead the tags head's")
    counts = NgramCounts(spec).transform(batch)
    title = _fit_head(spec, config, counts[:n_title], title_target, title_weights)
    return _model(spec, [title, _fit_head(spec, config, counts, target, weights)])


def _fit_head(
    spec: FeatureSpec, config: TrainConfig, counts: sp.csr_matrix, target: np.ndarray, weights: np.ndarray
) -> Pipeline:
    """A head's pipeline, its tf-idf and SGD steps fitted on hashed `counts`."""
    head = pipeline(spec, config)
    tfidf, sgd = head.named_steps["tfidf"], head.named_steps["sgd"]
    sgd.fit(tfidf.fit_transform(counts), target, sample_weight=weights)
    # Score with exactly the weights the ONNX file stores (see weights.round_weights).
    tfidf.idf_, sgd.coef_ = round_weights(tfidf.idf_, sgd.coef_)
    return head


def weights_of(model: Model) -> List[HeadWeights]:
    """Each head's weights, in head order."""
    return [
        HeadWeights(model.tfidf(h).idf_, model.classifier(h).coef_, model.classifier(h).intercept_)
        for h in (TITLE_HEAD, TAGS_HEAD)
    ]


def from_weights(spec: FeatureSpec, heads: Sequence[HeadWeights], labels: Sequence[str]) -> Model:
    """A 'fitted' model from known weights (an exported file's, or test values).

    idf and coef should already lie on round_weights' grid, as the ONNX file stores them.
    """
    return _model(spec, [_head_from_weights(spec, head, labels) for head in heads])


def _head_from_weights(spec: FeatureSpec, weights: HeadWeights, labels: Sequence[str]) -> Pipeline:
    fitted = pipeline(spec, DEFAULT_CONFIG)
    fitted.named_steps["tfidf"].idf_ = np.asarray(weights.idf, dtype=np.float64)
    classifier = fitted.named_steps["sgd"]
    classifier.coef_ = np.ascontiguousarray(weights.coef, dtype=np.float64)
    classifier.intercept_ = np.asarray(weights.intercept, dtype=np.float64)
    classifier.classes_ = np.array(list(labels), dtype=object)
    classifier.n_features_in_ = spec.n_features
    return fitted


def _model(spec: FeatureSpec, heads: Sequence[Pipeline]) -> Model:
    if len(heads) != N_HEADS:
        raise ValueError(f"a model has a title head and a tags head, got {len(heads)} heads")
    title, tags = heads
    if list(title.classes_) != list(tags.classes_):
        raise ValueError(f"the heads' classes differ: {list(title.classes_)} and {list(tags.classes_)}")
    return Model(spec, (title, tags))
