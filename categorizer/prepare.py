"""Transformation: clean the listings, find leakage groups, de-duplicate."""

from __future__ import annotations

from typing import Dict, Hashable

import numpy as np
import pandas as pd

from categorizer.features import FeatureSpec


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
    return " ".join(spec.words(title))


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
