"""The onnxruntime wrapper, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pytest

from runtime.categorizer import Categorizer, ModelError
from service.scheduler import SUB_BATCH_ROWS, predict_in_sub_batches
from tests.datasets import listing_fields, python_feeds


@pytest.fixture(scope="module")
def model(model_path: str) -> Categorizer:
    return Categorizer.load(model_path)


def test_labels_come_from_the_metadata(model: Categorizer, model_labels: Tuple[str, ...]) -> None:
    assert model.labels == model_labels


def test_empty_batch_returns_nothing_without_running(model: Categorizer) -> None:
    assert model.predict([], []) == []


def test_sub_batches_keep_each_row_in_place(model: Categorizer, test_products: List[Dict[str, str]]) -> None:
    # More rows than a sub-batch, lengths shuffled so the length sort really reorders.
    rows = [test_products[(i * 37) % len(test_products)] for i in range(SUB_BATCH_ROWS * 2 + 17)]
    titles = [r["title"] + " !" * (i % 11) for i, r in enumerate(rows)]
    tags = [r["concatenated_tags"] for r in rows]
    alone = [
        model.predict_with_probabilities({"title": [t], "concatenated_tags": [g]})
        for t, g in zip(titles, tags)
    ]
    categories, probabilities = predict_in_sub_batches(model, {"title": titles, "concatenated_tags": tags})
    assert categories == [labels[0] for labels, _ in alone]
    np.testing.assert_allclose(probabilities, np.concatenate([rows for _, rows in alone]), rtol=0, atol=1e-6)
    assert len(set(categories)) > 1, "all rows got one category: the order check would be vacuous"


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load model"):
        Categorizer.load(str(tmp_path / "missing.onnx"))


def test_corrupt_model_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelError) as info:
        Categorizer.load(str(path))
    assert "\n" not in str(info.value)


def test_nul_characters_count_as_the_space_they_fold_to(model: Categorizer) -> None:
    # A NUL inside a string once cut it short on its way into onnxruntime: the
    # text after it was silently ignored. JSON allows "\u0000", so clients can send it.
    titles = ["\x00Fralda de pano bebê kit", "Kit\x00 Lembrancinha Chá de Bebê", "caneca\x00\x00azul\x00"]
    tags = ["", "batizado\x00menino", "\x00"]
    spaced = [t.replace("\x00", " ") for t in titles]
    assert model.predict(titles, tags) == model.predict(spaced, [t.replace("\x00", " ") for t in tags])
    assert model.predict(titles[:1], [""]) == model.predict(["Fralda de pano bebê kit"], [""])


def test_probabilities_are_the_graphs_own_output(
    model: Categorizer, model_path: str, test_products: List[Dict[str, str]]
) -> None:
    rows = test_products[:300]
    titles = [r["title"] for r in rows]
    tags = [r["concatenated_tags"] for r in rows]
    # Every other product with its listing fields: None where unknown, as the service sends.
    products = [{"title": t, "concatenated_tags": g} for t, g in zip(titles, tags)]
    for product, row in list(zip(products, rows))[::2]:
        product.update(listing_fields(row))
    columns = {name: [p.get(name) for p in products] for name in model.inputs if name not in ("title",)}
    columns["seller_id"] = [str(v) if v is not None else "" for v in columns["seller_id"]]
    labels, probabilities = model.predict_with_probabilities({"title": titles, **columns})
    # onnxruntime run directly, on a session of its own, with the plainest inputs.
    direct = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    want_labels, want_probabilities = direct.run(["label", "probabilities"], python_feeds(direct, products))
    assert labels == want_labels.tolist()
    # Without fields, predict and predict_with_probabilities agree with the direct run too.
    plain = direct.run(
        ["label"], python_feeds(direct, [{"title": t, "concatenated_tags": g} for t, g in zip(titles, tags)])
    )[0]
    assert model.predict(titles, tags) == plain.tolist()
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(rows), len(model.labels))
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=0, atol=1e-6)
    # The category's probability is the row's highest (the batch scorer's confidence).
    chosen = probabilities[np.arange(len(rows)), [model.labels.index(label) for label in labels]]
    np.testing.assert_array_equal(chosen, probabilities.max(axis=1))


def test_model_inputs_missing_from_the_texts_are_none(model: Categorizer) -> None:
    titles = ["Kit 10 sabonetes lembrancinha", "Colar de prata com pingente"]
    alone = model.predict_with_probabilities({"title": titles, "not_a_model_input": ["x", "y"]})
    blank = model.predict_with_probabilities({"title": titles, "concatenated_tags": ["", ""]})
    assert alone[0] == blank[0]
    np.testing.assert_array_equal(alone[1], blank[1])
    assert {"title", "concatenated_tags"} <= set(model.inputs)


def test_no_products_no_run(model: Categorizer) -> None:
    labels, probabilities = model.predict_with_probabilities({"title": []})
    assert labels == []
    assert probabilities.shape == (0, len(model.labels))
