"""treinamento.ipynb runs headless end to end, and retraining reproduces the artifact."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import nbformat
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import numpy_helper

from categorizer import data, export, prepare
from tests.datasets import ROOT, model_file, public_test_csv, skip_or_fail

NOTEBOOK = ROOT / "treinamento.ipynb"

# Words that make a synthetic title obviously one category, for runs without data.
VOCABULARY = {
    "Bebê": "body mordedor fralda berço naninha enxoval",
    "Bijuterias e Jóias": "colar brinco pulseira anel pingente prata",
    "Decoração": "quadro almofada vaso luminária espelho tapete",
    "Lembrancinhas": "lembrancinha sabonete tubete sacolinha caixinha mimo",
    "Outros": "bolsa chaveiro capa necessaire estojo carteira",
    "Papel e Cia": "caderno agenda convite planner adesivo etiqueta",
}


def synthetic_dataset(path: Path, products_per_category: int = 40) -> Path:
    """A small CSV of the real schema whose labels a model can learn."""
    rng = random.Random(0)
    rows: List[Dict[str, object]] = []
    for category, words in VOCABULARY.items():
        for _ in range(products_per_category):
            title = " ".join([*rng.sample(words.split(), 2), rng.choice(["azul", "kit", "lindo", "10"])])
            row: Dict[str, object] = dict.fromkeys(data.COLUMNS, 1)
            row.update(product_id=len(rows), title=title.capitalize(), category=category, order_counts="")
            row["concatenated_tags"] = words.split()[0]
            rows.append(row)
    pd.DataFrame(rows, columns=list(data.COLUMNS)).to_csv(path, index=False)
    return path


def run_notebook(tmp_path: Path, dataset: Path) -> Path:
    """Run `make train`'s command in a subprocess, writing into tmp_path.

    A subprocess keeps the kernel's sockets and event loop out of the test
    process, and exercises the same entry point as `make train`.
    """
    artifacts = tmp_path / "artifacts"
    env = dict(
        os.environ,
        DATASET_PATH=str(dataset.resolve()),
        ARTIFACTS_DIR=str(artifacts),
        METRICS_PATH=str(tmp_path / "metrics.json"),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, "-m", "categorizer.notebook", str(NOTEBOOK), str(tmp_path / "executed.ipynb")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return artifacts


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts of one headless run: the full training file in CI, else a synthetic sample."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    dataset = Path(os.environ.get("DATASET_PATH") or ROOT / data.DEFAULT_DATASET_PATH)
    if not dataset.is_file():
        if os.environ.get("REQUIRE_DATA") == "1":
            skip_or_fail(f"no training data at {dataset}")
        dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    return run_notebook(tmp_path, dataset)


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_writes_model_metrics_and_figures(trained: Path) -> None:
    assert (trained / "model.onnx").is_file()
    assert {p.name for p in trained.glob("*.png")} == {
        "confusion_title_only.png",
        "confusion_title_and_tags.png",
        "per_class_f1.png",
    }
    metrics = json.loads((trained.parent / "metrics.json").read_text(encoding="utf-8"))
    for view in ("title_only", "title_and_tags"):
        report = metrics["validation"][view]
        assert 0.0 <= report["macro_f1"] <= 1.0
        assert set(report["per_class"]) == set(data.CATEGORIES)
    meta = export.read_metadata(trained / "model.onnx")
    assert meta["training_data_sha256"] == metrics["dataset_sha256"]


@pytest.mark.slow
def test_retraining_reproduces_the_committed_artifact(trained: Path) -> None:
    committed = model_file()
    fresh = trained / "model.onnx"
    if (
        export.read_metadata(fresh)["training_data_sha256"]
        != export.read_metadata(committed)["training_data_sha256"]
    ):
        skip_or_fail("the committed artifact was trained on another file than DATASET_PATH")
    if platform.python_version_tuple()[:2] != ("3", "9"):
        pytest.skip("only the pinned Python 3.9 environment reproduces the artifact bit for bit")
    # Every weight of both heads, then the outputs of each head on real inputs.
    weights = [
        {init.name: numpy_helper.to_array(init) for init in onnx.load(str(p)).graph.initializer}
        for p in (committed, fresh)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name, array in weights[0].items():
        np.testing.assert_array_equal(array, weights[1][name], err_msg=name)
    products = prepare.clean(pd.read_csv(public_test_csv()))
    titles = products["title"].tolist()
    for tags in ([""] * len(titles), products["concatenated_tags"].tolist()):
        feeds = {"title": np.array(titles, dtype=object), "concatenated_tags": np.array(tags, dtype=object)}
        outputs = [
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)
            for p in (committed, fresh)
        ]
        assert list(outputs[0][0]) == list(outputs[1][0])
        np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
