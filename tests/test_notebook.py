"""treinamento.ipynb runs headless end to end, and retraining reproduces the artifact."""

from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import nbformat
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import numpy_helper

from categorizer import confidence, data, export, notebook, onnx_graph, prepare, validation
from categorizer.config import DEFAULT_TEST_PRODUCTS_PATH
from categorizer.features import Doc
from categorizer.sklearn_twin import Fields
from categorizer.weights import CONFIDENCE_KEY
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


def train_command(tmp_path: Path, notebook: Path = NOTEBOOK, **env: str) -> subprocess.CompletedProcess[str]:
    """`make train`'s command in a subprocess, writing into tmp_path.

    A subprocess keeps the kernel's sockets and event loop out of the test
    process, and exercises the same entry point as `make train`.
    """
    env = {
        **os.environ,
        "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "METRICS_PATH": str(tmp_path / "metrics.json"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    command = [sys.executable, "-m", "categorizer.notebook", str(notebook), str(tmp_path / "executed.ipynb")]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


@dataclass(frozen=True)
class Run:
    artifacts: Path
    stdout: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One headless run: the full training file in CI, else a synthetic sample."""
    tmp_path = tmp_path_factory.mktemp("notebook")
    dataset = Path(os.environ.get("DATASET_PATH") or ROOT / data.DEFAULT_DATASET_PATH)
    if not dataset.is_file():
        if os.environ.get("REQUIRE_DATA") == "1":
            skip_or_fail(f"no training data at {dataset}")
        dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    done = train_command(tmp_path, DATASET_PATH=str(dataset.resolve()))
    assert done.returncode == 0, done.stderr[-3000:]
    return Run(tmp_path / "artifacts", done.stdout)


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_writes_model_metrics_and_figures(trained: Run) -> None:
    artifacts = trained.artifacts
    assert (artifacts / "model.onnx").is_file()
    assert {p.name for p in artifacts.glob("*.png")} == {
        "confusion_title_only.png",
        "confusion_title_tags_and_fields.png",
        "per_class_f1.png",
    }
    metrics = json.loads((artifacts.parent / "metrics.json").read_text(encoding="utf-8"))
    for view in prepare.VIEWS:
        report = metrics["validation"][view]
        assert 0.0 <= report["macro_f1"] <= 1.0
        assert set(report["per_class"]) == set(data.CATEGORIES)
        # Every held-out row's seller is seen in training or not; new lines are some of the seen.
        groups = report["sellers"]
        assert groups["seen"]["n"] + groups["unseen"]["n"] == report["n"]
        assert groups["seen_new_line"]["n"] <= groups["seen"]["n"]
    meta = export.read_metadata(artifacts / "model.onnx")
    assert meta["training_data_sha256"] == metrics["dataset_sha256"]
    # The confidence table of each view, in metrics.json and in the model's metadata alike.
    table = metrics["confidence"]
    assert set(table) == set(prepare.VIEWS)
    for view in table.values():
        assert [row["threshold"] for row in view["thresholds"]] == list(confidence.THRESHOLDS)
        assert 0.0 <= view["ece"] <= 1.0
    assert json.loads(meta[CONFIDENCE_KEY]) == table


@pytest.mark.slow
def test_the_exported_models_public_figures_are_its_own(trained: Run) -> None:
    # The public test figures under "test_products" are the validated (fold 0) model's;
    # the file a reader loads is the refit on every row, scored apart.
    metrics = json.loads((trained.artifacts.parent / "metrics.json").read_text(encoding="utf-8"))
    public_test = Path(os.environ.get("TEST_PRODUCTS_PATH") or ROOT / DEFAULT_TEST_PRODUCTS_PATH)
    if not public_test.is_file():
        assert "test_products" not in metrics
        assert "test_products_exported_model" not in metrics
        return
    exported = metrics["test_products_exported_model"]
    session = ort.InferenceSession(str(trained.artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = json.loads(export.read_metadata(trained.artifacts / "model.onnx")["labels"])

    def predict(batch: List[Doc], fields: Optional[Fields]) -> np.ndarray:
        label: np.ndarray = session.run(["label"], onnx_graph.feeds(batch, fields))[0]
        return label

    products = prepare.clean(data.read_listings(public_test))
    for view, report in validation.evaluate(predict, products, labels).items():
        assert exported[view]["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-12), view
        assert exported[view]["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12), view


@pytest.mark.slow
def test_the_run_prints_a_line_per_step_then_the_files_it_wrote(trained: Run) -> None:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    titles = [step.title for step in notebook.steps(nb)]
    assert titles[1:] == ["1. Extraction", "2. Transformation", "3. Modelling", "4. Validation", "5. Export"]
    lines = trained.stdout.splitlines()
    step_lines = [line for line in lines if re.fullmatch(r"\S.*\S +\d+\.\d s", line)]
    assert [line.rsplit(maxsplit=2)[0] for line in step_lines] == titles
    # Each step's headline lines follow it, indented: the validation step's are its metrics.
    validation = lines[lines.index(step_lines[4]) + 1 : lines.index(step_lines[5])]
    assert all(line.startswith("    ") for line in validation)
    assert any(re.fullmatch(r" +macro_f1 +accuracy", line) for line in validation)
    public_test = Path(os.environ.get("TEST_PRODUCTS_PATH") or ROOT / DEFAULT_TEST_PRODUCTS_PATH)
    expected = "    test_products.title_only " if public_test.is_file() else "    public test: skipped ("
    assert any(line.startswith(expected) for line in validation)
    summary = lines[lines.index(step_lines[-1]) :]
    assert any(re.fullmatch(r"done in \d+ s; wrote \d+ files:", line) for line in summary)
    parent = trained.artifacts.parent
    for path in ("artifacts/model.onnx", "metrics.json", "executed.ipynb", "treinamento.md"):
        assert f"    {parent / path}" in summary


@pytest.mark.slow
def test_the_markdown_render_shows_the_figures(trained: Run) -> None:
    render = trained.artifacts.parent / "treinamento.md"
    figures = re.findall(r"!\[png\]\((.+?)\)", render.read_text(encoding="utf-8"))
    assert len(figures) >= 4, "the histogram, two confusion matrices and the per-class F1"
    assert all((render.parent / figure).is_file() for figure in figures)
    executed = nbformat.read(str(trained.artifacts.parent / "executed.ipynb"), as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells)


def test_a_wrong_dataset_path_is_one_line_first_and_creates_nothing(tmp_path: Path) -> None:
    done = train_command(tmp_path, DATASET_PATH=str(tmp_path / "data" / "elo7.csv"))
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    assert re.match(
        r"error: DatasetError: DATASET_PATH=.*Put the CSV at .* or point DATASET_PATH at it", first
    )
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_set_but_missing_test_products_path_is_an_error(tmp_path: Path) -> None:
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    done = train_command(tmp_path, DATASET_PATH=str(dataset), TEST_PRODUCTS_PATH=str(tmp_path / "test.csv"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: DatasetError: TEST_PRODUCTS_PATH=")
    assert list(tmp_path.iterdir()) == [dataset]


def test_a_metrics_path_that_cannot_be_written_is_found_before_training(tmp_path: Path) -> None:
    # Found after the kernel, the export would already have replaced the model.
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    (tmp_path / "taken").write_text("a file, not a directory")
    metrics = tmp_path / "taken" / "metrics.json"
    done = train_command(tmp_path, DATASET_PATH=str(dataset), METRICS_PATH=str(metrics))
    assert done.returncode == 1
    reason = "a directory, or no directory there that this process may write in"
    assert done.stderr == f"error: cannot write {metrics}: {reason}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["synthetic.csv", "taken"]


@pytest.mark.parametrize("target", ["metrics", "model"])
def test_an_output_path_that_is_a_directory_is_found_before_training(tmp_path: Path, target: str) -> None:
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    artifacts, metrics = tmp_path / "artifacts", tmp_path / "metrics.json"
    taken = metrics if target == "metrics" else artifacts / "model.onnx"
    taken.mkdir(parents=True)
    done = train_command(
        tmp_path, DATASET_PATH=str(dataset), ARTIFACTS_DIR=str(artifacts), METRICS_PATH=str(metrics)
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot write {taken}: a directory")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == sorted(
        [
            "synthetic.csv",
            *(["metrics.json"] if target == "metrics" else ["artifacts", "artifacts/model.onnx"]),
        ]
    )


@pytest.mark.parametrize("content", [None, "not a notebook"], ids=["missing", "not-json"])
def test_a_notebook_that_cannot_be_read_is_one_line(tmp_path: Path, content: Optional[str]) -> None:
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    notebook = tmp_path / "training.ipynb"
    if content is not None:
        notebook.write_text(content, encoding="utf-8")
    done = train_command(tmp_path, notebook, DATASET_PATH=str(dataset))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot read the notebook {notebook}: ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert {path.name for path in tmp_path.iterdir()} <= {dataset.name, notebook.name}  # nothing written


@pytest.mark.slow
def test_a_failing_cell_is_one_plain_line_first_then_its_traceback(tmp_path: Path) -> None:
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    pd.read_csv(dataset).drop(columns="category").to_csv(dataset, index=False)
    done = train_command(tmp_path, DATASET_PATH=str(dataset))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"error: DatasetError: {dataset}: missing column(s) category"
    assert lines[1] == "in step 1. Extraction:"
    assert "data.load(settings.dataset_path)" in done.stderr
    assert "\x1b[" not in done.stderr
    assert "no running event loop" not in done.stderr
    assert list(tmp_path.iterdir()) == [dataset]


@pytest.mark.slow
def test_a_dead_kernel_is_one_line_first_too(tmp_path: Path) -> None:
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    dies = tmp_path / "dies.ipynb"
    cells = [nbformat.v4.new_markdown_cell("## 1. Die"), nbformat.v4.new_code_cell("import os\nos._exit(1)")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(dies))
    done = train_command(tmp_path, notebook=dies, DATASET_PATH=str(dataset))
    assert done.returncode == 1
    assert done.stderr.splitlines()[:2] == ["error: DeadKernelError: Kernel died", "in step 1. Die:"]
    assert sorted(tmp_path.iterdir()) == sorted([dataset, dies])


@pytest.mark.slow
def test_what_the_kernel_process_prints_comes_after_the_error_line(tmp_path: Path) -> None:
    # The kernel's own stderr (C libraries, libzmq as it shuts down) once came first.
    dataset = synthetic_dataset(tmp_path / "synthetic.csv")
    noisy = tmp_path / "noisy.ipynb"
    cell = "import os\nos.write(2, b'straight to the process stderr\\n')\nraise ValueError('boom')"
    cells = [nbformat.v4.new_markdown_cell("## 1. Noise"), nbformat.v4.new_code_cell(cell)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(noisy))
    done = train_command(tmp_path, notebook=noisy, DATASET_PATH=str(dataset))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:2] == ["error: ValueError: boom", "in step 1. Noise:"]
    assert lines.index("straight to the process stderr") > lines.index("the kernel's own stderr:") > 1


def test_steps_group_code_cells_under_level_two_headings() -> None:
    new = nbformat.v4
    nb = new.new_notebook(
        cells=[
            new.new_markdown_cell("# Title"),
            new.new_code_cell("import x"),
            new.new_markdown_cell("## 1. Load\n\ntext"),
            new.new_code_cell("a = 1"),
            new.new_markdown_cell("### a detail"),
            new.new_code_cell("b = 2"),
            new.new_code_cell("  "),
            new.new_markdown_cell("## 2. Nothing to run"),
            new.new_markdown_cell("## 3. Save"),
            new.new_code_cell("save()"),
        ]
    )
    assert [(step.title, step.cells) for step in notebook.steps(nb)] == [
        ("Setup", [1]),
        ("1. Load", [3, 5]),
        ("3. Save", [9]),
    ]


@pytest.mark.slow
def test_retraining_reproduces_the_committed_artifact(trained: Run) -> None:
    committed = model_file()
    fresh = trained.artifacts / "model.onnx"
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
    for view in prepare.VIEWS:
        inputs = onnx_graph.feeds(*prepare.view(products, view))
        outputs = [
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, inputs)
            for p in (committed, fresh)
        ]
        assert list(outputs[0][0]) == list(outputs[1][0])
        np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
