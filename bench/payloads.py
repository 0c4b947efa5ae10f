"""Request bodies for the benchmarks: real titles from the public test file when present."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import List

import msgspec

ROOT = Path(__file__).resolve().parent.parent
TEST_PRODUCTS = ROOT.parent / "shared" / "data" / "test_products.csv"
# Words of synthetic titles, used when the public test file is absent.
_VOCABULARY = (
    "kit caneca personalizada lembrancinha batizado body bebê manga longa colar prata "
    "convite casamento festa infantil quadro decorativo almofada bolsa maternidade topo "
    "de bolo caixa mdf sabonete brinco pérola scrapbook agenda 2019 adesivo chá revelação"
)
_WORDS = _VOCABULARY.split()


def titles_source() -> str:
    """Where the titles come from: TEST_PRODUCTS_PATH, the shared test file, or synthetic."""
    path = Path(os.environ.get("TEST_PRODUCTS_PATH") or TEST_PRODUCTS)
    return str(path) if path.is_file() else "synthetic"


def load_titles(count: int = 500) -> List[str]:
    """Real product titles when the public test file exists, else synthetic ones (seeded)."""
    source = titles_source()
    if source != "synthetic":
        with open(source, encoding="utf-8", newline="") as f:
            titles = [row["title"] for row in csv.DictReader(f) if row.get("title", "").strip()]
        if titles:
            return titles
    rng = random.Random(7)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]


def bodies(titles: List[str], per_request: int, count: int) -> List[bytes]:
    """`count` distinct JSON bodies of `per_request` products each, cycling through titles."""
    out = []
    for b in range(count):
        start = b * per_request
        chosen = [titles[(start + i) % len(titles)] for i in range(per_request)]
        out.append(msgspec.json.encode({"products": [{"title": t} for t in chosen]}))
    return out
