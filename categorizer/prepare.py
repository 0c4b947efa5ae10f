"""Transformation: clean the listings, find leakage groups, de-duplicate, build the training examples."""

from __future__ import annotations

import math
from typing import Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from categorizer.features import NUMBER_FIELDS, SELLER, Doc, FeatureSpec
from categorizer.heads import EMPTY_TAGS, TAGS_HEAD, heads_of_tags
from categorizer.sklearn_twin import Fields, words


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as tidy strings, sellers as strings ("" unknown), numbers as
    floats (NaN unknown); rows without a usable title dropped."""
    out = frame.copy()
    out["title"] = _squash(out["title"])
    out["concatenated_tags"] = _squash(out["concatenated_tags"])
    out["query"] = _squash(out["query"])
    out[SELLER] = seller_ids(out[SELLER]) if SELLER in out else ""
    for name in NUMBER_FIELDS:
        out[name] = pd.to_numeric(out[name], errors="coerce") if name in out else np.nan
    return out[out["title"] != ""].reset_index(drop=True)


def seller_ids(column: pd.Series) -> pd.Series:
    """Seller ids as the model takes them, the same as every caller sends them: decimal
    digits for a whole number ("9835835", never "9835835.0" from a column that pandas
    read as floats), text without surrounding white space, "" when missing."""
    return column.map(_seller_id)


def _seller_id(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def fields_of(frame: pd.DataFrame) -> Fields:
    """The listing fields of cleaned rows."""
    return Fields.of(frame[SELLER].tolist(), {name: frame[name].to_numpy() for name in NUMBER_FIELDS})


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


# The inputs a client may send, by name: (with its tags, with its listing fields).
# Reports and tables of the validation use these names.
VIEWS: Dict[str, Tuple[bool, bool]] = {
    "title_only": (False, False),
    "title_and_tags": (True, False),
    "title_and_fields": (False, True),
    "title_tags_and_fields": (True, True),
}


def view(frame: pd.DataFrame, name: str) -> Tuple[List[Doc], Optional[Fields]]:
    """The docs and fields (None: every field unknown) of cleaned rows as the view `name` sends them."""
    with_tags, with_fields = VIEWS[name]
    batch = docs(frame["title"].tolist(), frame["concatenated_tags"].tolist() if with_tags else None)
    return batch, fields_of(frame) if with_fields else None


def training_views(frame: pd.DataFrame) -> tuple[List[Doc], np.ndarray]:
    """Every product twice: title only (what most clients send) and title + tags."""
    titles = frame["title"].tolist()
    both = docs(titles) + docs(titles, frame["concatenated_tags"].tolist())
    return both, np.concatenate([frame["category"].to_numpy()] * 2)


# Seed of the field dropout, so that retraining reproduces the model.
DROPOUT_SEED = 0


class Examples(NamedTuple):
    """Training examples: docs, their listing fields, categories, sample weights, and
    whether each is a view with fields (the others are the text-only examples)."""

    docs: List[Doc]
    fields: Fields
    target: np.ndarray
    weights: np.ndarray
    field_view: np.ndarray

    def take(self, rows: Union[Sequence[int], np.ndarray]) -> Examples:
        """These examples' rows `rows`, in that order."""
        index = np.asarray(rows, dtype=np.intp)
        return Examples(
            [self.docs[i] for i in index],
            self.fields.take(index.tolist()),
            self.target[index],
            self.weights[index],
            self.field_view[index],
        )

    def then(self, other: Examples) -> Examples:
        """These examples, then `other`'s."""
        return Examples(
            self.docs + other.docs,
            self.fields.concat(other.fields),
            np.concatenate([self.target, other.target]),
            np.concatenate([self.weights, other.weights]),
            np.concatenate([self.field_view, other.field_view]),
        )


def _examples(
    batch: List[Doc], target: np.ndarray, weights: np.ndarray, fields: Optional[Fields] = None
) -> Examples:
    known = Fields.unknown(len(batch)) if fields is None else fields
    return Examples(batch, known, target, weights, np.full(len(batch), fields is not None))


def training_examples(
    rows: pd.DataFrame,
    query_weight: float,
    tags_only_weight: float = 0.0,
    fields_weight: float = 0.0,
    field_dropout: float = 0.0,
) -> Examples:
    """Both views of each distinct product without its fields, weight one; each
    search query as a title, weighted by its category share; when fields_weight
    > 0, both views again with the product's fields, each field of each view
    left unknown with probability field_dropout; and when tags_only_weight
    > 0, the tags of each product that has them: one example per product, so
    tags that many products share weigh more.

    The views without fields teach the text alone, which serves a caller who
    sends no fields as well as before the fields existed; the views with them
    teach what a field adds to the same text. Dropping fields at random teaches
    the other fields to stand without them: a caller may send some fields and
    not others, and a product's seller is unknown when the model never saw it.
    """
    distinct = deduplicate(rows)
    batch, target = training_views(distinct)
    examples = _examples(batch, target, np.ones(len(batch)))
    queries = query_shares(rows)
    examples = examples.then(
        _examples(
            docs(queries["query"].tolist()),
            queries["category"].to_numpy(),
            query_weight * queries["share"].to_numpy(),
        )
    )
    if fields_weight > 0:
        both = fields_of(distinct).concat(fields_of(distinct)).dropped(field_dropout, DROPOUT_SEED)
        examples = examples.then(_examples(batch, target, np.full(len(batch), fields_weight), both))
    if tags_only_weight > 0:
        tagged = distinct[heads_of_tags(distinct["concatenated_tags"]) == TAGS_HEAD]
        examples = examples.then(
            _examples(
                docs([""] * len(tagged), tagged["concatenated_tags"].tolist()),
                tagged["category"].to_numpy(),
                np.full(len(tagged), tags_only_weight),
            )
        )
    return examples
