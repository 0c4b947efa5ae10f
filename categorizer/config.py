"""Training settings, read from the environment (the notebook's only inputs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from categorizer.data import DEFAULT_DATASET_PATH

DEFAULT_TEST_PRODUCTS_PATH = Path("data/test_products.csv")


@dataclass(frozen=True)
class TrainSettings:
    # The Elo7 listings CSV; downloaded from the public URL when missing.
    dataset_path: Path
    # Where model.onnx and the figures go.
    artifacts_dir: Path
    # Where metrics.json goes (METRICS_PATH overrides artifacts_dir/metrics.json).
    metrics_path: Path
    # Optional public test file; evaluated (never trained on) when it exists.
    test_products_path: Optional[Path]
    # Rows to sample for a quick run (tests); 0 uses every row.
    sample_rows: int

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> TrainSettings:
        env = os.environ if env is None else env
        artifacts = Path(env.get("ARTIFACTS_DIR") or "artifacts")
        test_products = Path(env.get("TEST_PRODUCTS_PATH") or DEFAULT_TEST_PRODUCTS_PATH)
        sample = env.get("SAMPLE_ROWS") or "0"
        if not sample.isdigit():
            raise ValueError(f"SAMPLE_ROWS must be a non-negative integer, got {sample!r}")
        return cls(
            dataset_path=Path(env.get("DATASET_PATH") or DEFAULT_DATASET_PATH),
            artifacts_dir=artifacts,
            metrics_path=Path(env.get("METRICS_PATH") or artifacts / "metrics.json"),
            test_products_path=test_products if test_products.exists() else None,
            sample_rows=int(sample),
        )
