"""Transformation: clean the listings, find leakage groups, de-duplicate, build the training examples."""

from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from categorizer.features import Doc, FeatureSpec
from categorizer.heads import EMPTY_TAGS, TAGS_HEAD, heads_of_tags
from categorizer.sklearn_twin import words


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as tidy strings; rows without a usable title dropped."""
    out = frame.copy()
    out["title"] = _squash(out["title"])
    out["concatenated_tags"] = _squash(out["concatenated_tags"])
    out["query"] = _squash(out["query"])
    return out[out["title"] != ""].reset_index(drop=True)


def _squash(column: pd.Series) -> pd.Series:
    return column.fillna("").astype(str).str.split().str.join(" ")


def normalised_title(spec: FeatureSpec, title: str) -> str:
    """The title as the model sees its words: case, accents and punctuation gone."""
    return " ".join(words(spec, title))


def leakage_groups(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Group id per row: rows linked by a product id or a normalised title share one.

    The same product shows up once per search, and different products share
    titles; a split that separates such rows would grade the model on answers
    it memorised. Connected components of the product/title graph keep every
    linked row on one side.
    """
    parent: Dict[Hashable, Hashable] = {}

    def find(node: Hashable) -> Hashable:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    titles = [normalised_title(spec, t) for t in frame["title"]]
    for product, title in zip(frame["product_id"], titles):
        parent[find(("p", product))] = find(("t", title))
    roots = [find(("p", product)) for product in frame["product_id"]]
    codes: np.ndarray = pd.factorize(pd.Series(roots, dtype=object))[0]
    return codes


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (title, tags, category): search repeats add no signal."""
    return frame.drop_duplicates(["title", "concatenated_tags", "category"]).reset_index(drop=True)


def query_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (query, category) the searches showed: the share of the query's rows.

    A search query is a short text a user typed for what they wanted, and the
    categories of the products it showed say what that was. It is only known
    while training (clients send titles), so it can teach the title-only view
    words it would not otherwise see, but never be a feature.
    """
    searched = frame[frame["query"] != ""]
    counts = searched.groupby(["query", "category"]).size().rename("rows").reset_index()
    counts["share"] = counts["rows"] / counts.groupby("query")["rows"].transform("sum")
    return counts[["query", "category", "share"]]


def docs(titles: Sequence[str], tags: Optional[Sequence[str]] = None) -> List[Doc]:
    """(title, tags) pairs; no tags means the title-only view."""
    return list(zip(titles, tags if tags is not None else [EMPTY_TAGS] * len(titles)))


def training_views(frame: pd.DataFrame) -> tuple[List[Doc], np.ndarray]:
    """Every product twice: title only (what most clients send) and title + tags."""
    titles = frame["title"].tolist()
    both = docs(titles) + docs(titles, frame["concatenated_tags"].tolist())
    return both, np.concatenate([frame["category"].to_numpy()] * 2)


def training_examples(
    rows: pd.DataFrame, query_weight: float, tags_only_weight: float = 0.0
) -> Tuple[List[Doc], np.ndarray, np.ndarray]:
    """(docs, categories, sample weights): both views of each distinct product,
    weight one, then each search query as a title, weighted by its category
    share, then (when tags_only_weight > 0) the tags of each product that has them:
    one example per product, so tags that many products share weigh more."""
    distinct = deduplicate(rows)
    batch, target = training_views(distinct)
    queries = query_shares(rows)
    weights = np.concatenate([np.ones(len(batch)), query_weight * queries["share"].to_numpy()])
    target = np.concatenate([target, queries["category"].to_numpy()])
    batch = batch + docs(queries["query"].tolist())
    if tags_only_weight > 0:
        tagged = distinct[heads_of_tags(distinct["concatenated_tags"]) == TAGS_HEAD]
        batch = batch + docs([""] * len(tagged), tagged["concatenated_tags"].tolist())
        weights = np.concatenate([weights, np.full(len(tagged), tags_only_weight)])
        target = np.concatenate([target, tagged["category"].to_numpy()])
    return batch, target, weights
