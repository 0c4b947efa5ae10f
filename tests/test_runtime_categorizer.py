"""The onnxruntime wrapper, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from runtime.categorizer import Categorizer, ModelError
from service.scheduler import SUB_BATCH_ROWS, predict_in_sub_batches


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
    alone = [model.predict([t], [g])[0] for t, g in zip(titles, tags)]
    assert predict_in_sub_batches(model, titles, tags) == alone
    assert len(set(alone)) > 1, "all rows got one category: the order check would be vacuous"


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
