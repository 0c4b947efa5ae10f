"""Which head scores a product: the tags head when its tags string is not empty.

The model has two heads, two sets of weights over the same features. The title
head scores products sent without tags, which is what most clients send; the
tags head scores the others. The tags head also learns from each product's tags
alone, which helps products with tags and, in one model, would hurt titles
(see docs/decisions.md, 'Two heads').

The rule reads only whether the string is empty: tags of white space only, or
that fold to nothing, still choose the tags head. Training (model, prepare) and
the ONNX graph (onnx_graph) all take it from here.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from categorizer.features import Doc

# Head indices, in the order of the model's heads and of the file's tables.
TITLE_HEAD = 0
TAGS_HEAD = 1
N_HEADS = 2
# The tags of a product sent without tags.
EMPTY_TAGS = ""


def head_of(tags: str) -> int:
    """TAGS_HEAD for a product sent with tags (a non-empty string), else TITLE_HEAD."""
    return TAGS_HEAD if tags != EMPTY_TAGS else TITLE_HEAD


def heads_of_tags(tags: Iterable[str]) -> np.ndarray:
    """head_of each tags string."""
    return np.array([head_of(tag) for tag in tags], dtype=np.intp)


def heads_of(batch: Sequence[Doc]) -> np.ndarray:
    """head_of each (title, tags) pair."""
    return heads_of_tags(tags for _, tags in batch)
