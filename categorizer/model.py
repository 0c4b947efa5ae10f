"""Modelling: hashed features + SGD logistic regression, trained on two views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

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
    # None or "balanced" (re-weights the 19:1 class imbalance).
    class_weight: Optional[str] = None


def vectorizer(spec: FeatureSpec) -> HashingVectorizer:
    """The scikit-learn realisation of `spec` (the ONNX one is onnx_graph)."""
    return HashingVectorizer(
        analyzer=spec.analyze,
        n_features=spec.n_features,
        alternate_sign=True,
        norm="l2",
        dtype=np.float64,
    )


def docs(titles: Sequence[str], tags: Optional[Sequence[str]] = None) -> List[Doc]:
    """(title, tags) pairs; no tags means the title-only view."""
    return list(zip(titles, tags if tags is not None else [""] * len(titles)))


def training_views(frame: pd.DataFrame) -> tuple[List[Doc], np.ndarray]:
    """Every product twice: title only (what most clients send) and title + tags."""
    titles = frame["title"].tolist()
    both = docs(titles) + docs(titles, frame["concatenated_tags"].tolist())
    return both, np.concatenate([frame["category"].to_numpy()] * 2)


@dataclass
class Model:
    """A fitted vectorizer + classifier pair, with weights as the ONNX file stores them."""

    spec: FeatureSpec
    classifier: SGDClassifier

    @property
    def labels(self) -> List[str]:
        return [str(label) for label in self.classifier.classes_]

    def decision(self, batch: Sequence[Doc]) -> np.ndarray:
        return self.classifier.decision_function(vectorizer(self.spec).transform(batch))

    def predict_proba(self, batch: Sequence[Doc]) -> np.ndarray:
        return self.classifier.predict_proba(vectorizer(self.spec).transform(batch))

    def predict(self, batch: Sequence[Doc]) -> np.ndarray:
        return self.classifier.predict(vectorizer(self.spec).transform(batch))


def fit(frame: pd.DataFrame, spec: FeatureSpec, config: TrainConfig = TrainConfig()) -> Model:
    """Train on both views of `frame` (cleaned and de-duplicated)."""
    batch, target = training_views(frame)
    classifier = SGDClassifier(
        loss="log_loss",
        alpha=config.alpha,
        max_iter=config.max_iter,
        tol=None,
        class_weight=config.class_weight,
        random_state=RANDOM_STATE,
    )
    classifier.fit(vectorizer(spec).transform(batch), target)
    # The ONNX file stores float32 weights; use exactly those here too, so
    # scikit-learn and onnxruntime score with the same numbers.
    classifier.coef_ = classifier.coef_.astype(np.float32).astype(np.float64)
    return Model(spec, classifier)
