"""Behaviour of the committed model, through onnxruntime as clients run it.

Minimum functionality (obvious titles), invariance (what must not change the
answer) and direction (what must move it the right way) — checks that survive
retraining, unlike exact scores.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from categorizer import prepare
from categorizer.validation import strip_accents
from tests.datasets import model_file, public_test_csv, python_feeds

# The bar for titles typed without accents.
MIN_ACCENT_AGREEMENT = 0.995

OBVIOUS = {
    "Body de bebê manga longa": "Bebê",
    "Mordedor de silicone para bebê": "Bebê",
    "Colar de prata com pingente": "Bijuterias e Jóias",
    "Brinco folheado a ouro": "Bijuterias e Jóias",
    "Quadro decorativo para sala": "Decoração",
    "Almofada decorativa": "Decoração",
    "Lembrancinha de casamento": "Lembrancinhas",
    "Sabonete lembrancinha batizado": "Lembrancinhas",
    "Caderno personalizado": "Papel e Cia",
    "Agenda personalizada": "Papel e Cia",
}


class Categorizer:
    def __init__(self) -> None:
        self.session = ort.InferenceSession(str(model_file()), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: List[str] = json.loads(meta["labels"])

    def run(self, titles: List[str], tags: List[str] = [], **fields: Any) -> Tuple[List[str], np.ndarray]:  # noqa: B006
        """Labels and probabilities; `fields` are listing fields given to every product."""
        products = [
            {"title": t, "concatenated_tags": g, **fields} for t, g in zip(titles, tags or [""] * len(titles))
        ]
        labels, proba = self.session.run(None, python_feeds(self.session, products))
        return list(labels), proba

    def proba_of(self, title: str, label: str, tags: str = "", **fields: Any) -> float:
        _, proba = self.run([title], [tags], **fields)
        return float(proba[0, self.labels.index(label)])


@pytest.fixture(scope="module")
def model() -> Categorizer:
    return Categorizer()


def test_obvious_titles_get_their_category(model: Categorizer) -> None:
    labels, _ = model.run(list(OBVIOUS))
    assert dict(zip(OBVIOUS, labels)) == OBVIOUS


def test_every_category_is_reachable(model: Categorizer) -> None:
    assert set(OBVIOUS.values()) <= set(model.labels)


@pytest.mark.parametrize(
    "variant",
    [str.upper, str.lower, strip_accents, lambda t: f"  {t}!!! ", lambda t: t.replace(" ", " - ")],
    ids=["upper", "lower", "no_accents", "padding_punctuation", "dashes"],
)
def test_label_is_invariant_to_case_accents_and_punctuation(model: Categorizer, variant: object) -> None:
    titles = list(OBVIOUS)
    changed = [variant(t) for t in titles]  # type: ignore[operator]
    assert model.run(changed)[0] == model.run(titles)[0]


def test_accent_stripped_public_titles_keep_their_label(model: Categorizer) -> None:
    titles = prepare.clean(pd.read_csv(public_test_csv()))["title"].tolist()
    original, _ = model.run(titles)
    stripped, _ = model.run([strip_accents(t) for t in titles])
    agreement = float(np.mean(np.array(original) == np.array(stripped)))
    assert agreement >= MIN_ACCENT_AGREEMENT


DIRECTIONS: Dict[str, Tuple[str, str]] = {
    "Bebê": ("Kit toalha", "Kit toalha para bebê recém nascido"),
    "Bijuterias e Jóias": ("Pingente", "Pingente colar folheado"),
    "Papel e Cia": ("Kit festa", "Kit festa convites e papelaria personalizada"),
}


@pytest.mark.parametrize("label", sorted(DIRECTIONS))
def test_telling_words_raise_their_category(model: Categorizer, label: str) -> None:
    plain, telling = DIRECTIONS[label]
    assert model.proba_of(telling, label) > model.proba_of(plain, label)


def test_tags_pointing_to_a_category_raise_it(model: Categorizer) -> None:
    title = "Kit personalizado"
    assert model.proba_of(title, "Bebê", tags="bebe maternidade enxoval") > model.proba_of(title, "Bebê")


def test_probabilities_are_a_distribution(model: Categorizer) -> None:
    _, proba = model.run([*OBVIOUS, "", "???"])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba >= 0).all()


def test_fields_the_model_cannot_use_change_nothing(model: Categorizer) -> None:
    # A seller never seen in training is unknown, like a missing field: the product goes
    # to the heads without fields, the model of before the fields.
    titles = list(OBVIOUS)
    _, plain = model.run(titles)
    _, unseen = model.run(titles, seller_id="a seller no listing has")
    np.testing.assert_array_equal(plain, unseen)


def test_a_sellers_history_pulls_an_ambiguous_title_toward_its_category(
    model: Categorizer, test_products: List[Dict[str, str]]
) -> None:
    # The public test file's busiest seller, and the category of most of its products.
    by_seller: Dict[str, List[str]] = {}
    for row in test_products:
        by_seller.setdefault(row["seller_id"], []).append(row["category"])
    seller, categories = max(by_seller.items(), key=lambda item: len(item[1]))
    usual = max(set(categories), key=categories.count)
    title = "Kit personalizado"
    assert model.proba_of(title, usual, seller_id=seller) > model.proba_of(title, usual) + 0.1


def test_clear_text_still_beats_a_sellers_history(model: Categorizer) -> None:
    # A seller's new line: obvious titles keep their category whatever the seller sells.
    for title, label in OBVIOUS.items():
        assert model.run([title], seller_id="9835835")[0] == [label], title
