"""The same model.onnx labels titles identically from Node.js (onnxruntime-node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from tests.datasets import ROOT, model_file, public_test_csv
from tests.test_onnx_parity import ADVERSARIAL_TAGS, ADVERSARIAL_TITLES

NODE_DIR = ROOT / "tests" / "node"
# npm fetches about 70 MB the first time; later runs find node_modules in place.
NPM_TIMEOUT_SECONDS = 300
NODE_TIMEOUT_SECONDS = 120
# float32 probabilities from two builds of onnxruntime: the same graph, the same
# kernels, so anything beyond rounding noise is a real difference.
MAX_PROBA_DELTA = 1e-6


def node_tools() -> Tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to check the model from Node.js")
    return node, npm


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = node_tools()
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        # --ignore-scripts: the postinstall step downloads extra binaries and fails
        # offline; the CPU binaries ship inside the package itself.
        command = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-package-lock"]
        subprocess.run(command, cwd=NODE_DIR, check=True, capture_output=True, timeout=NPM_TIMEOUT_SECONDS)
    return node


def run_node(node: str, model: Path, products: List[Dict[str, str]]) -> Tuple[List[str], np.ndarray]:
    done = subprocess.run(
        [node, "categorize.js", str(model)],
        cwd=NODE_DIR,
        input=json.dumps(products),
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    return out["labels"], np.array(out["probabilities"], dtype=np.float32)


def run_python(model: Path, products: List[Dict[str, str]]) -> Tuple[List[str], np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {
        name: np.array([p.get(name, "") for p in products], dtype=object)
        for name in ("title", "concatenated_tags")
    }
    labels, proba = session.run(None, feeds)
    return list(labels), proba


def assert_same(node: str, products: List[Dict[str, str]]) -> None:
    model = model_file()
    node_labels, node_proba = run_node(node, model, products)
    py_labels, py_proba = run_python(model, products)
    differ = [(p["title"][:40], a, b) for p, a, b in zip(products, node_labels, py_labels) if a != b]
    assert not differ, f"{len(differ)} label(s) differ, e.g. {differ[:3]}"
    assert float(np.abs(node_proba - py_proba).max()) <= MAX_PROBA_DELTA


def test_node_labels_adversarial_text_like_python(node: str) -> None:
    products = [{"title": t, "concatenated_tags": g} for t in ADVERSARIAL_TITLES for g in ADVERSARIAL_TAGS]
    assert_same(node, products)


def test_node_labels_the_public_test_file_like_python(node: str) -> None:
    frame = pd.read_csv(public_test_csv(), dtype=str).fillna("")
    titles_only = [{"title": t} for t in frame["title"]]
    with_tags = [
        {"title": t, "concatenated_tags": g} for t, g in zip(frame["title"], frame["concatenated_tags"])
    ]
    assert_same(node, titles_only + with_tags)
