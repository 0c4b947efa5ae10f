"""Held-out macro-F1 of the benchmark's anchors, on the project's grouped validation.

`python -m bench.anchor_quality [--folds N] [--model word word_char] [--json PATH]` trains
each anchor's recipe (bench/anchor.py) on the training side of the project's split and
scores it on the held-out side: the same cleaning, product/title groups and folds as
training (categorizer.prepare, categorizer.validation), titles only, since the anchors
read nothing else. It reports fold 0 (the fold artifacts/metrics.json reports) and the
mean of the first N folds; then, trained on the whole training file, its score on the
public test file when there is one (never trained on).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bench import anchor, payloads
from categorizer import data, prepare, validation
from categorizer.features import FeatureSpec
from categorizer.model import RANDOM_STATE


def folds(frame: pd.DataFrame, groups: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(train, validation) row indices of every fold of the project's split.

    validation.grouped_split returns the first fold only; the others come from the same
    splitter, and `first_folds` checks that the first still is grouped_split's."""
    splitter = StratifiedGroupKFold(n_splits=validation.N_FOLDS, shuffle=True, random_state=RANDOM_STATE)
    yield from splitter.split(frame, frame["category"], groups)


def first_folds(frame: pd.DataFrame, groups: np.ndarray, n_folds: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The first n_folds of folds(), after checking that fold 0 is the one training reports."""
    splits = list(itertools.islice(folds(frame, groups), n_folds))
    if not np.array_equal(splits[0][1], validation.grouped_split(frame, groups)[1]):
        raise RuntimeError("fold 0 is no longer validation.grouped_split's: update folds()")
    return splits


def fit(model: str, frame: pd.DataFrame) -> Any:
    return anchor.pipeline(model).fit(frame["title"], frame["category"])


def macro_f1(fitted: Any, frame: pd.DataFrame) -> float:
    predicted = list(fitted.predict(frame["title"]))
    score: float = validation.report(frame["category"].tolist(), predicted, data.CATEGORIES)["macro_f1"]
    return score


def measure(dataset: Path, n_folds: int, models: Sequence[str]) -> Dict[str, Any]:
    """Per model: macro-F1 per fold, their mean, and on the public test file (or None)."""
    frame = prepare.clean(data.load(dataset))
    groups = prepare.leakage_groups(frame, FeatureSpec())
    splits = first_folds(frame, groups, n_folds)
    source = payloads.titles_source()
    test = None if source == "synthetic" else prepare.clean(pd.read_csv(source))
    out: Dict[str, Any] = {"dataset": str(dataset), "test_products": None if test is None else source}
    for model in models:
        scores: List[float] = []
        for train_idx, valid_idx in splits:
            scores.append(round(macro_f1(fit(model, frame.iloc[train_idx]), frame.iloc[valid_idx]), 4))
            print(f"{model} fold {len(scores) - 1}: {scores[-1]:.4f}", file=sys.stderr, flush=True)
        public = None if test is None else round(macro_f1(fit(model, frame), test), 4)
        out[model] = {"folds": scores, "mean": round(statistics.mean(scores), 4), "test_products": public}
    return out


def table(result: Dict[str, Any], models: Sequence[str]) -> str:
    n = len(result[models[0]]["folds"])
    names = {model: f"{model}: {anchor.DESCRIPTIONS[model]}" for model in models}
    width = max(len("macro-F1, titles only"), *map(len, names.values()))
    lines = [f"{'macro-F1, titles only':<{width}} {'fold 0':>7} {f'mean of {n}':>10} {'public test':>12}"]
    for model in models:
        row = result[model]
        public = "-" if row["test_products"] is None else f"{row['test_products']:.4f}"
        lines.append(f"{names[model]:<{width}} {row['folds'][0]:>7.4f} {row['mean']:>10.4f} {public:>12}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.anchor_quality", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("--model", nargs="+", choices=anchor.MODELS, default=list(anchor.MODELS))
    args = parser.parse_args(argv)
    result = measure(anchor.dataset_path(), args.folds, args.model)
    report(table(result, args.model), result, args.json)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--folds and --json, as every measure of held-out quality here takes them."""
    parser.add_argument(
        "--folds",
        type=int,
        default=validation.N_FOLDS,
        choices=range(1, validation.N_FOLDS + 1),
        help=f"folds to average (default {validation.N_FOLDS})",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")


def report(text: str, result: Dict[str, Any], json_path: Optional[Path]) -> None:
    """The table on stdout; the figures in `json_path` too, when given."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
