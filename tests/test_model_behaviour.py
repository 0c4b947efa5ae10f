"""Behaviour of the committed model, through onnxruntime as clients run it.

Minimum functionality (obvious titles), invariance (what must not change the
answer) and direction (what must move it the right way) — checks that survive
retraining, unlike exact scores.
"""

from __future__ import annotations

import json
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from categorizer import prepare
from categorizer.validation import strip_accents
from tests.datasets import model_file, public_test_csv

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

    def run(self, titles: List[str], tags: List[str] = []) -> Tuple[List[str], np.ndarray]:  # noqa: B006
        feeds = {
            "title": np.array(titles, dtype=object),
            "concatenated_tags": np.array(tags or [""] * len(titles), dtype=object),
        }
        labels, proba = self.session.run(None, feeds)
        return list(labels), proba

    def proba_of(self, title: str, label: str, tags: str = "") -> float:
        _, proba = self.run([title], [tags])
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
