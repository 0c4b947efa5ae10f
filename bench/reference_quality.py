"""Held-out macro-F1 of issue 13's reference, with and without the listing fields.

`python -m bench.reference_quality [--folds N] [--json PATH]` fits the usual strong text
baseline, TF-IDF word 1-2-grams + char_wb 2-5-grams (sublinear tf, terms in at least two
rows) and a LinearSVC with scikit-learn's defaults, on the training side of each of the
project's grouped folds (bench.anchor_quality.first_folds), for the four inputs a client may
send (prepare.VIEWS), and scores it on the held-out side. With the fields it gets one
token per known field in a one-hot block of its own, each worth 1: the seller's id, each
number's bin (the model's own log-scale bins, FeatureSpec.number_edges) and express
delivery. It is the model issue 13's goal is set against, measured on our folds, so that
the two are compared side by side rather than across datasets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
import scipy.sparse as sp

from bench import anchor, anchor_quality
from categorizer import data, prepare, validation
from categorizer.features import SELLER, FeatureSpec
from categorizer.prepare import VIEWS
from categorizer.sklearn_twin import field_tokens


class Reference:
    """The reference for one view: fit on rows, predict rows."""

    def __init__(self, spec: FeatureSpec, with_tags: bool, with_fields: bool) -> None:
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.svm import LinearSVC

        self.spec, self.with_tags, self.with_fields = spec, with_tags, with_fields
        self.words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        self.chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
        self.fields = CountVectorizer(binary=True, token_pattern=r"\S+", lowercase=False)
        self.svc = LinearSVC()

    def fit(self, rows: pd.DataFrame) -> Reference:
        text = self._text(rows)
        blocks = [self.words.fit_transform(text), self.chars.fit_transform(text)]
        if self.with_fields:
            self.sellers = sorted(set(rows[SELLER]) - {""})
            blocks.append(self.fields.fit_transform(self._tokens(rows)))
        self.svc.fit(sp.hstack(blocks, format="csr"), rows["category"])
        return self

    def predict(self, rows: pd.DataFrame) -> List[str]:
        text = self._text(rows)
        blocks = [self.words.transform(text), self.chars.transform(text)]
        if self.with_fields:
            blocks.append(self.fields.transform(self._tokens(rows)))
        return [str(label) for label in self.svc.predict(sp.hstack(blocks, format="csr"))]

    def _text(self, rows: pd.DataFrame) -> List[str]:
        if not self.with_tags:
            return [str(title) for title in rows["title"]]
        return [f"{title} {tags}" for title, tags in zip(rows["title"], rows["concatenated_tags"])]

    def _tokens(self, rows: pd.DataFrame) -> List[str]:
        """Each row's known fields as words: 'field:token', unknowns left out."""
        tokens = field_tokens(self.spec, self.sellers, prepare.fields_of(rows))
        return [" ".join(f"{field}:{t}" for field, t in enumerate(row) if t) for row in tokens]


def measure(dataset: Path, n_folds: int) -> Dict[str, Any]:
    """Per view: macro-F1 per fold and their mean."""
    spec = FeatureSpec()
    frame = prepare.clean(data.load(dataset))
    groups = prepare.leakage_groups(frame, spec)
    splits = anchor_quality.first_folds(frame, groups, n_folds)
    out: Dict[str, Any] = {"dataset": str(dataset)}
    for name, (with_tags, with_fields) in VIEWS.items():
        scores: List[float] = []
        for train_idx, valid_idx in splits:
            train, valid = frame.iloc[train_idx], frame.iloc[valid_idx]
            predicted = Reference(spec, with_tags, with_fields).fit(train).predict(valid)
            truth = valid["category"].tolist()
            scores.append(round(validation.report(truth, predicted, data.CATEGORIES)["macro_f1"], 4))
            print(f"{name} fold {len(scores) - 1}: {scores[-1]:.4f}", file=sys.stderr, flush=True)
        out[name] = {"folds": scores, "mean": round(statistics.mean(scores), 4)}
    return out


def table(result: Dict[str, Any]) -> str:
    n = len(result["title_only"]["folds"])
    lines = [f"{'macro-F1 of the reference':<26} {'fold 0':>7} {f'mean of {n}':>10}"]
    for name in VIEWS:
        row = result[name]
        lines.append(f"{name:<26} {row['folds'][0]:>7.4f} {row['mean']:>10.4f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference_quality", description=__doc__.splitlines()[0]
    )
    anchor_quality.add_arguments(parser)
    args = parser.parse_args(argv)
    result = measure(anchor.dataset_path(), args.folds)
    anchor_quality.report(table(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
