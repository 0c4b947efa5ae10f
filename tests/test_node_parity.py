"""The same model.onnx labels products identically from Node.js (onnxruntime-node) and Python.

tests/node/categorize.js is what a Node.js team would write: it loads the model with the
pinned onnxruntime-node and prints labels and probabilities as JSON. Both runtimes get the
very same batches; labels must be identical and probabilities agree to MAX_PROBA_DELTA.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import onnxruntime as ort
import pytest

from tests.datasets import ROOT, Product, listing_fields, model_file, public_test_csv, python_feeds
from tests.test_onnx_parity import ADVERSARIAL_TAGS, ADVERSARIAL_TITLES

NODE_DIR = ROOT / "tests" / "node"
PACKAGE = "onnxruntime-node"
# npm fetches about 70 MB the first time; later runs find node_modules in place.
NPM_TIMEOUT_SECONDS = 300
NODE_TIMEOUT_SECONDS = 120
# float32 probabilities from two builds of onnxruntime: the same graph, the same
# kernels, so anything beyond rounding noise is a real difference.
MAX_PROBA_DELTA = 1e-6

Prediction = Tuple[List[str], np.ndarray]


def pinned_version() -> str:
    manifest = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    version = manifest["dependencies"][PACKAGE]
    assert isinstance(version, str)
    return version


def installed_version() -> Optional[str]:
    manifest = NODE_DIR / "node_modules" / PACKAGE / "package.json"
    if not manifest.is_file():
        return None
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return version if isinstance(version, str) else None


def npm_install(npm: str) -> None:
    # --ignore-scripts: the postinstall step downloads extra binaries and fails
    # offline; the CPU binaries ship inside the package itself.
    command = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-package-lock"]
    try:
        done = subprocess.run(
            command,
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=NPM_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` in {NODE_DIR} took over {NPM_TIMEOUT_SECONDS} s")
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` in {NODE_DIR} failed:\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the pinned onnxruntime-node installed beside categorize.js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to check the model from Node.js")
    if installed_version() != pinned_version():
        npm_install(npm)
    assert installed_version() == pinned_version(), f"{PACKAGE} did not install in {NODE_DIR}"
    return node


@pytest.fixture(scope="module")
def model() -> Path:
    # Absolute: node runs from tests/node, and MODEL_PATH may be relative to here.
    return model_file().resolve()


@pytest.fixture(scope="module")
def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def run_node(
    node: str, model: Path, products: List[Product], batch_size: int = 0, input_file: Optional[Path] = None
) -> Prediction:
    command = [node, "categorize.js", str(model)]
    stdin: Optional[str] = json.dumps(products)
    if input_file is not None:
        input_file.write_text(json.dumps(products), encoding="utf-8")
        command.append(str(input_file))
        stdin = None
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    done = subprocess.run(
        command,
        cwd=NODE_DIR,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    return out["labels"], np.array(out["probabilities"], dtype=np.float32)


def run_python(session: ort.InferenceSession, products: List[Product], batch_size: int = 0) -> Prediction:
    step = batch_size or len(products)
    labels: List[str] = []
    proba = []
    for start in range(0, len(products), step):
        batch = products[start : start + step]
        part_labels, part_proba = session.run(None, python_feeds(session, batch))
        labels += [str(label) for label in part_labels]
        proba.append(part_proba)
    return labels, np.concatenate(proba)


def assert_same(node: Prediction, python: Prediction, products: List[Product]) -> None:
    node_labels, node_proba = node
    py_labels, py_proba = python
    assert len(node_labels) == len(py_labels) == len(products)
    assert node_proba.shape == py_proba.shape == (len(products), py_proba.shape[1])
    differ = [
        (p["title"][:40], p.get("concatenated_tags", "")[:40], a, b)
        for p, a, b in zip(products, node_labels, py_labels)
        if a != b
    ]
    assert not differ, (
        f"{len(differ)} of {len(products)} label(s) differ (title, tags, node, python): {differ[:5]}"
    )
    delta = np.abs(node_proba - py_proba).max(axis=1)
    worst = int(delta.argmax())
    assert float(delta[worst]) <= MAX_PROBA_DELTA, (
        f"probabilities differ by {float(delta[worst]):.3g} on {products[worst]['title'][:40]!r}"
    )


def adversarial_products() -> List[Product]:
    """Every adversarial title with every tag string, including "" (no tags) and no field at all."""
    products = [{"title": t, "concatenated_tags": g} for t in ADVERSARIAL_TITLES for g in ADVERSARIAL_TAGS]
    return products + [{"title": t} for t in ADVERSARIAL_TITLES]


def test_adversarial_text_covers_the_hard_cases() -> None:
    titles = "".join(ADVERSARIAL_TITLES)
    for needle in ("Ç", "Ã", "É", "ê", "😀", "中", "ע", "ع", "9", "e\u0301", "\u3000"):
        assert needle in titles, needle
    assert "" in ADVERSARIAL_TITLES
    assert any(t and not t.strip() for t in ADVERSARIAL_TITLES)
    assert any(t and not any(c.isalnum() or c.isspace() for c in t) for t in ADVERSARIAL_TITLES)
    assert max(map(len, ADVERSARIAL_TITLES)) >= 10_000
    assert "" in ADVERSARIAL_TAGS
    assert any(ADVERSARIAL_TAGS)


def test_node_labels_adversarial_text_like_python(
    node: str, model: Path, session: ort.InferenceSession
) -> None:
    products = adversarial_products()
    assert_same(run_node(node, model, products), run_python(session, products), products)


def test_node_labels_one_product_at_a_time_like_python(
    node: str, model: Path, session: ort.InferenceSession, tmp_path: Path
) -> None:
    """Batches of one (N=1), with the products read from a file rather than stdin."""
    products = adversarial_products()
    from_node = run_node(node, model, products, batch_size=1, input_file=tmp_path / "products.json")
    assert_same(from_node, run_python(session, products, batch_size=1), products)


def test_node_labels_the_public_test_file_like_python(
    node: str, model: Path, session: ort.InferenceSession
) -> None:
    with public_test_csv().open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    with_tags = [{"title": r["title"] or "", "concatenated_tags": r["concatenated_tags"] or ""} for r in rows]
    titles_only = [{"title": p["title"], "concatenated_tags": ""} for p in with_tags]
    products = with_tags + titles_only
    assert_same(run_node(node, model, products), run_python(session, products), products)


def test_node_labels_the_public_test_file_with_its_fields_like_python(
    node: str, model: Path, session: ort.InferenceSession
) -> None:
    with public_test_csv().open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with_fields = [{"title": r["title"] or "", **listing_fields(r)} for r in rows]
    everything = [{**p, "concatenated_tags": r["concatenated_tags"] or ""} for p, r in zip(with_fields, rows)]
    products = with_fields + everything
    assert sum("seller_id" in p for p in products) == len(products), "every test row has a seller"
    assert_same(run_node(node, model, products), run_python(session, products), products)
