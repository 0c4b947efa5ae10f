"""Which head scores a product: by whether it was sent with tags, and with listing fields.

The model has four heads, four sets of weights over the same features. The
title head scores products sent without tags, which is what most clients
send; the tags head scores the others. The tags head also learns from each
product's tags alone, which helps products with tags and, in one model,
would hurt titles (see docs/decisions.md, 'Two heads').

Each of the two has a twin trained with the listing fields, which scores the
products sent with at least one field the model can use (a number, or a
seller seen in training). The heads without fields are trained exactly as
before the fields existed, so a product sent without them is scored by the
same weights as then (see docs/decisions.md, 'Heads with fields beside the
heads without').

The tags rule reads only whether the string is empty: tags of white space only,
or that fold to nothing, still choose a tags head. Training (model, prepare),
the scikit-learn twin and the ONNX graph (onnx_graph) all take it from here.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from categorizer.features import Doc

# Head indices, in the order of the model's heads and of the file's tables: a
# head with fields is its text twin's index plus WITH_FIELDS, so the graph finds
# a product's head as TAGS_HEAD * (tags sent) + (a field known).
TITLE_HEAD = 0
TAGS_HEAD = 2
WITH_FIELDS = 1
TITLE_FIELDS_HEAD = TITLE_HEAD + WITH_FIELDS
TAGS_FIELDS_HEAD = TAGS_HEAD + WITH_FIELDS
N_HEADS = 4
TEXT_HEADS = (TITLE_HEAD, TAGS_HEAD)
FIELD_HEADS = (TITLE_FIELDS_HEAD, TAGS_FIELDS_HEAD)
# The tags of a product sent without tags.
EMPTY_TAGS = ""


def head_of(tags: str, fields_known: bool = False) -> int:
    """TAGS_HEAD for a product sent with tags (a non-empty string), else TITLE_HEAD;
    plus WITH_FIELDS when the product came with a field the model can use."""
    text = TAGS_HEAD if tags != EMPTY_TAGS else TITLE_HEAD
    return text + WITH_FIELDS if fields_known else text


def heads_of_tags(tags: Iterable[str]) -> np.ndarray:
    """head_of each tags string, without fields."""
    return np.array([head_of(tag) for tag in tags], dtype=np.intp)


def heads_of(batch: Sequence[Doc], fields_known: Optional[np.ndarray] = None) -> np.ndarray:
    """head_of each (title, tags) pair; fields_known[i] says whether product i came
    with a field the model can use (None: no product did)."""
    heads = heads_of_tags(tags for _, tags in batch)
    return heads if fields_known is None else heads + WITH_FIELDS * np.asarray(fields_known, dtype=np.intp)
