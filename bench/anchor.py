"""The typical stack this project is measured against, run side by side by `python -m bench`.

Flask behind gunicorn (2 sync workers) around a pickled scikit-learn TF-IDF + logistic
regression, as issue 4 describes it. Not part of the product: only the benchmark starts it,
so that the "vs anchor" ratios come from the same run on the same machine, not from
figures measured another day.

Two models, one stack:

- `word` (the default): word 1-2-gram TF-IDF + LR, the anchor of record. It is the model
  issue 4's figures were measured on, so issue 16's goals are ratios to it.
- `word_char`: the same plus character 2-5-grams: slower and more accurate (still less
  than the service, docs/performance.md), so a ratio to it says how the service compares
  with the typical stack once that stack pays for accuracy too.

`python -m bench.anchor [--model word|word_char]` (HOST and PORT from the environment)
trains that model on first use (each cached in its own file in bench/results/), then
serves `POST /v1/categorize` and `GET /healthz`. `python -m bench.anchor_quality` scores
both on the project's grouped validation.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from bench.payloads import ROOT

ANCHOR = "word"
REFERENCE = "word_char"
MODELS = (ANCHOR, REFERENCE)
DESCRIPTIONS = {
    ANCHOR: "word-only TF-IDF + LR",
    REFERENCE: "word + character TF-IDF + LR",
}
RESULTS = ROOT / "bench" / "results"
# The anchor's configuration in issue 4: gunicorn's sync workers, two of them.
WORKERS = 2
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "elo7_train.csv"


def dataset_path() -> Path:
    return Path(os.environ.get("DATASET_PATH") or DEFAULT_DATASET)


def cache_path(model: str) -> Path:
    """One pickle per model: switching models never serves the other one's file."""
    _check(model)
    return RESULTS / f"anchor-{model}.pkl"


def pipeline(model: str) -> Any:
    """The usual recipe, unfitted: TF-IDF (sublinear tf, terms seen at least twice) and a
    logistic regression with scikit-learn's defaults, on titles alone.

    `word` is word 1-2-grams only, as issue 4's anchor; `word_char` adds character
    2-5-grams within word boundaries, the usual way to buy accuracy with speed.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    _check(model)
    features: Any = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    if model == REFERENCE:
        characters = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
        features = make_union(features, characters)
    return make_pipeline(features, LogisticRegression(max_iter=1000))


def train(dataset: Path, model: str = ANCHOR) -> Any:
    import pandas as pd

    frame = pd.read_csv(dataset)
    return pipeline(model).fit(frame["title"].fillna(""), frame["category"])


def load_or_train(model: str = ANCHOR, cache: Optional[Path] = None) -> Path:
    cache = cache or cache_path(model)
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as out:
            pickle.dump(train(dataset_path(), model), out)
    return cache


def create_app(model_path: Path) -> Any:
    from flask import Flask, jsonify, request

    with model_path.open("rb") as source:
        model = pickle.load(source)  # our own file: the pickle the typical stack ships
    app = Flask(__name__)

    @app.post("/v1/categorize")
    def categorize() -> Any:
        products = request.get_json()["products"]
        titles = [product["title"] for product in products]
        return jsonify(categories=model.predict(titles).tolist())

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def serve(host: str, port: int, model_path: Path, workers: int = WORKERS) -> None:
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    class Anchor(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("loglevel", "warning")

        def load(self) -> Any:
            return create_app(model_path)

        def init(self, parser: Any, opts: Any, args: Any) -> Optional[Dict[str, Any]]:
            return None

    Anchor().run()


def available() -> bool:
    try:
        import flask  # noqa: F401
        import gunicorn  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def _check(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown anchor model {model!r}: expected one of {', '.join(MODELS)}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.anchor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=ANCHOR,
        help=f"{ANCHOR}: {DESCRIPTIONS[ANCHOR]}, the anchor of record (default); "
        f"{REFERENCE}: {DESCRIPTIONS[REFERENCE]}",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    model = parse_args(argv).model
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8090"))
    serve(host, port, load_or_train(model))


if __name__ == "__main__":
    main()
