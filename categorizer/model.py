"""Modelling: hashed text features, tf-idf with occurrence l2 norms per block, the
listing fields' tokens beside them, SGD logistic regression.

Four heads share the features: one scores products sent without tags, one
products sent with them, and a twin of each, trained with the listing fields
too, scores the products that come with a field it can use (see heads). Without
fields, the fields' block is empty and the text alone decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier

from categorizer import prepare
from categorizer.features import Doc, FeatureSpec
from categorizer.heads import N_HEADS, TAGS_HEAD, TEXT_HEADS, TITLE_HEAD, WITH_FIELDS, heads_of
from categorizer.sklearn_twin import Fields, FieldTokens, NgramCounts, OccurrenceTfidf, block_scores
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
    # Weight of each product's views with its listing fields, beside the same
    # views without them (see prepare.training_examples); 0 trains no field block.
    fields_weight: float = 1.0
    # Chance that a view with fields leaves out each of them (see
    # prepare.training_examples): teaches the model callers who send some fields,
    # and sellers it never saw.
    field_dropout: float = 0.1
    # Share of the tags head's twin's weights taken from a second fit on its views
    # with fields alone (the first also reads the views without): a second opinion
    # that leans more on the fields, averaged in. The title head's twin takes none:
    # there it cost twice the new lines for no gain (see docs/decisions.md, 'The tags
    # twin mixed with a fit on its views with fields alone').
    fields_only_share: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.fields_only_share <= 1.0:
            raise ValueError(f"fields_only_share is a share, from 0 to 1, got {self.fields_only_share}")


@dataclass
class Head:
    """One head: the text's tf-idf and the field tokens side by side, then SGD.

    Its SGD's columns are the text's n_features, then the field block's tokens.
    """

    counts: NgramCounts
    tfidf: OccurrenceTfidf
    fields: FieldTokens
    sgd: SGDClassifier

    def design(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> sp.csr_matrix:
        """What SGD reads: [N, n_features + field tokens]; no fields is all unknown."""
        fields = Fields.unknown(len(batch)) if fields is None else fields
        text = self.tfidf.transform(self.counts.transform(batch))
        return sp.hstack([text, self.fields.transform(fields)], format="csr")

    def predict_proba(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        proba: np.ndarray = self.sgd.predict_proba(self.design(batch, fields))
        return proba

    def decision_function(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        scores: np.ndarray = self.sgd.decision_function(self.design(batch, fields))
        return scores

    def predict(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        labels: np.ndarray = self.sgd.predict(self.design(batch, fields))
        return labels

    def block_scores(self, batch: Sequence[Doc], fields: Fields) -> List[np.ndarray]:
        counts = self.counts.transform(batch)
        return block_scores(self.tfidf, self.sgd, counts, self.fields.transform(fields))


@dataclass
class Model:
    """The fitted heads, with weights exactly as the ONNX file stores them.

    The heads read the same features; heads.head_of says which one scores a
    product, and why there are four. `fields` lays out the field block, the
    same for every head.
    """

    spec: FeatureSpec
    heads: Tuple[Head, ...]

    @property
    def fields(self) -> FieldTokens:
        return self.heads[TITLE_HEAD].fields

    def tfidf(self, head: int) -> OccurrenceTfidf:
        return self.heads[head].tfidf

    def classifier(self, head: int) -> SGDClassifier:
        return self.heads[head].sgd

    @property
    def labels(self) -> List[str]:
        return [str(label) for label in self.classifier(TITLE_HEAD).classes_]

    def predict_proba(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        """Probabilities per product; `fields` None means every field unknown."""
        proba = np.zeros((len(batch), len(self.labels)))
        for head, rows, part, known in self._routes(batch, fields):
            proba[rows] = self.heads[head].predict_proba(part, known)
        return proba

    def predict(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        labels = np.empty(len(batch), dtype=object)
        for head, rows, part, known in self._routes(batch, fields):
            labels[rows] = self.heads[head].predict(part, known)
        return labels

    def decision_function(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> np.ndarray:
        scores = np.zeros((len(batch), len(self.labels)))
        for head, rows, part, known in self._routes(batch, fields):
            scores[rows] = self.heads[head].decision_function(part, known)
        return scores

    def block_scores(self, batch: Sequence[Doc], fields: Optional[Fields] = None) -> List[np.ndarray]:
        """The BLOCK_SCORES stage: per block (characters, words, fields), each product's
        [n_classes] scores from its head."""
        out = [np.zeros((len(batch), len(self.labels))) for _ in range(3)]
        for head, rows, part, known in self._routes(batch, fields):
            for block, scores in zip(out, self.heads[head].block_scores(part, known)):
                block[rows] = scores
        return out

    def _routes(
        self, batch: Sequence[Doc], fields: Optional[Fields]
    ) -> List[Tuple[int, np.ndarray, List[Doc], Fields]]:
        """(head, row indices, their docs, their fields) for each head that scores some of the batch."""
        known = Fields.unknown(len(batch)) if fields is None else fields
        if len(known) != len(batch):
            raise ValueError(f"{len(batch)} products but fields for {len(known)}")
        heads = heads_of(batch, self.fields.known(known))
        routes = [(head, np.flatnonzero(heads == head)) for head in range(N_HEADS)]
        return [
            (head, rows, [batch[i] for i in rows], known.take(rows.tolist()))
            for head, rows in routes
            if rows.size
        ]


def classifier(config: TrainConfig) -> SGDClassifier:
    # n_jobs: the one-vs-rest fits of the classes run in threads, one per CPU. Each
    # class's seed is drawn before they start, so the weights are the same bit for bit.
    return SGDClassifier(
        loss="log_loss",
        alpha=config.alpha,
        max_iter=config.max_iter,
        tol=None,
        class_weight=config.class_weight,
        random_state=RANDOM_STATE,
        n_jobs=-1,
    )


DEFAULT_CONFIG = TrainConfig()


def fit(rows: pd.DataFrame, spec: FeatureSpec, config: TrainConfig = DEFAULT_CONFIG) -> Model:
    """Train the four heads on the cleaned listing `rows` (one per search, as published)."""
    text = {
        TITLE_HEAD: prepare.training_examples(rows, config.query_weight),
        TAGS_HEAD: prepare.training_examples(rows, config.query_weight, config.tags_only_weight),
    }
    fields_options = (config.fields_weight, config.field_dropout)
    with_fields = {
        TITLE_HEAD: prepare.training_examples(rows, config.query_weight, 0.0, *fields_options),
        TAGS_HEAD: prepare.training_examples(
            rows, config.query_weight, config.tags_only_weight, *fields_options
        ),
    }
    # Every head's examples are texts of the tags head's: hash each once (hashing
    # is most of the training time) and pick the rows of each head's examples.
    counts = NgramCounts(spec).transform(text[TAGS_HEAD].docs)
    row_of = {doc: i for i, doc in reversed(list(enumerate(text[TAGS_HEAD].docs)))}
    # The sellers of the products the twins learn from: a seller only in rows that
    # de-duplication drops would be a token with no weight, sending its products to a
    # twin that knows nothing of it.
    fields = FieldTokens(spec).fit(prepare.fields_of(prepare.deduplicate(rows)))
    fitted: Dict[int, SGDClassifier] = {}
    tfidfs: Dict[int, OccurrenceTfidf] = {}
    for head in TEXT_HEADS:
        plain, full = text[head], with_fields[head]
        # One idf for a head and its twin with fields: from the text examples only,
        # which the views with fields repeat.
        plain_counts = counts[_rows(row_of, plain)]
        tfidf = OccurrenceTfidf(spec.block_width, smooth_idf=True).fit(plain_counts)
        fitted[head] = _fit_sgd(config, tfidf, plain_counts, fields, plain)
        share = config.fields_only_share if head == TAGS_HEAD else 0.0
        fitted[head + WITH_FIELDS] = _fit_twin(
            config, share, tfidf, counts[_rows(row_of, full)], fields, full
        )
        # Score with exactly the weights the ONNX file stores (see weights.round_weights).
        tfidf.idf_ = round_weights(tfidf.idf_, fitted[head].coef_)[0]
        for sgd in (fitted[head], fitted[head + WITH_FIELDS]):
            sgd.coef_ = round_weights(tfidf.idf_, sgd.coef_)[1]
        tfidfs[head] = tfidfs[head + WITH_FIELDS] = tfidf
    return _model(spec, [Head(NgramCounts(spec), tfidfs[h], fields, fitted[h]) for h in range(N_HEADS)])


def _rows(row_of: Dict[Doc, int], examples: prepare.Examples) -> List[int]:
    return [row_of[doc] for doc in examples.docs]


def _fit_sgd(
    config: TrainConfig,
    tfidf: OccurrenceTfidf,
    counts: sp.csr_matrix,
    fields: FieldTokens,
    examples: prepare.Examples,
) -> SGDClassifier:
    """SGD fitted on the examples' tf-idf beside their field tokens (none known: an all-zero block)."""
    sgd = classifier(config)
    design = sp.hstack([tfidf.transform(counts), fields.transform(examples.fields)], format="csr")
    sgd.fit(design, examples.target, sample_weight=examples.weights)
    return sgd


def _fit_twin(
    config: TrainConfig,
    share: float,
    tfidf: OccurrenceTfidf,
    counts: sp.csr_matrix,
    fields: FieldTokens,
    examples: prepare.Examples,
) -> SGDClassifier:
    """A head with fields: SGD on all its examples, its weights mixed with those of SGD
    on its views with fields alone, `share` of them from the second.

    Both read the same features, so the mixed weights score a product as the two fits'
    scores mixed would: one head in the file, the serving graph unchanged.
    """
    sgd = _fit_sgd(config, tfidf, counts, fields, examples)
    views = np.flatnonzero(examples.field_view)
    if share == 0 or not views.size:  # fields_weight 0: no views with fields to fit
        return sgd
    alone = _fit_sgd(config, tfidf, counts[views], fields, examples.take(views))
    if not np.array_equal(sgd.classes_, alone.classes_):  # else the weights would broadcast
        raise ValueError(f"the views with fields hold classes {alone.classes_}, all examples {sgd.classes_}")
    sgd.coef_ = (1 - share) * sgd.coef_ + share * alone.coef_
    sgd.intercept_ = (1 - share) * sgd.intercept_ + share * alone.intercept_
    return sgd


def weights_of(model: Model) -> List[HeadWeights]:
    """Each head's weights, in head order."""
    width = model.spec.n_features
    return [
        HeadWeights(
            model.tfidf(h).idf_,
            model.classifier(h).coef_[:, :width],
            model.classifier(h).intercept_,
            model.classifier(h).coef_[:, width:],
        )
        for h in range(N_HEADS)
    ]


def from_weights(
    spec: FeatureSpec, heads: Sequence[HeadWeights], labels: Sequence[str], sellers: Sequence[str] = ()
) -> Model:
    """A 'fitted' model from known weights (an exported file's, or test values), with
    `sellers` the seller tokens' ids (FieldTokens.sellers_).

    idf and coef should already lie on round_weights' grid, as the ONNX file stores them.
    """
    fields = FieldTokens(spec).set_sellers(sellers)
    return _model(spec, [_head_from_weights(spec, head, labels, fields) for head in heads])


def _head_from_weights(
    spec: FeatureSpec, weights: HeadWeights, labels: Sequence[str], fields: FieldTokens
) -> Head:
    tfidf = OccurrenceTfidf(spec.block_width, smooth_idf=True)
    tfidf.idf_ = np.asarray(weights.idf, dtype=np.float64)
    sgd = classifier(DEFAULT_CONFIG)
    field_coef = np.asarray(weights.field_coef, dtype=np.float64).reshape(len(labels), -1)
    if field_coef.shape[1] != fields.width_:
        raise ValueError(
            f"{field_coef.shape[1]} field coefficients per class for {fields.width_} field tokens"
        )
    sgd.coef_ = np.ascontiguousarray(np.hstack([np.asarray(weights.coef, dtype=np.float64), field_coef]))
    sgd.intercept_ = np.asarray(weights.intercept, dtype=np.float64)
    sgd.classes_ = np.array(list(labels), dtype=object)
    sgd.n_features_in_ = sgd.coef_.shape[1]
    return Head(NgramCounts(spec), tfidf, fields, sgd)


def _model(spec: FeatureSpec, heads: Sequence[Head]) -> Model:
    if len(heads) != N_HEADS:
        raise ValueError(f"a model has {N_HEADS} heads (heads.py), got {len(heads)}")
    classes = [list(head.sgd.classes_) for head in heads]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"the heads' classes differ: {classes}")
    if any(head.fields is not heads[0].fields for head in heads):
        raise ValueError("the heads must share one field layout")
    return Model(spec, tuple(heads))
