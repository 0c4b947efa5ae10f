"""Training settings, read from the environment (the notebook's only inputs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from categorizer.data import DEFAULT_DATASET_PATH, DatasetError

DEFAULT_TEST_PRODUCTS_PATH = Path("data/test_products.csv")


@dataclass(frozen=True)
class TrainSettings:
    # The Elo7 listings CSV; downloaded from the public URL when missing at the default path.
    dataset_path: Path
    # Where model.onnx and the figures go.
    artifacts_dir: Path
    # Where metrics.json goes (METRICS_PATH overrides artifacts_dir/metrics.json).
    metrics_path: Path
    # Optional public test file, evaluated (never trained on); None skips that evaluation.
    test_products_path: Optional[Path]
    # Rows to sample for a quick run (tests); 0 uses every row.
    sample_rows: int

    @property
    def model_path(self) -> Path:
        """Where the ONNX file goes: the notebook's export and the runner's check before
        the kernel starts both read it here."""
        return self.artifacts_dir / "model.onnx"

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> TrainSettings:
        """The settings, or a DatasetError naming the variable whose file is missing."""
        env = os.environ if env is None else env
        artifacts = Path(env.get("ARTIFACTS_DIR") or "artifacts")
        sample = env.get("SAMPLE_ROWS") or "0"
        if not sample.isdigit():
            raise ValueError(f"SAMPLE_ROWS must be a non-negative integer, got {sample!r}")
        return cls(
            dataset_path=_dataset_path(env.get("DATASET_PATH")),
            artifacts_dir=artifacts,
            metrics_path=Path(env.get("METRICS_PATH") or artifacts / "metrics.json"),
            test_products_path=_test_products_path(env.get("TEST_PRODUCTS_PATH")),
            sample_rows=int(sample),
        )


def _dataset_path(value: Optional[str]) -> Path:
    # Only the default path is filled by a download: a mistyped DATASET_PATH must
    # fail at once, not fetch the file to the typo.
    path = Path(value or DEFAULT_DATASET_PATH)
    if not path.is_file() and path.resolve() != DEFAULT_DATASET_PATH.resolve():
        raise DatasetError(
            f"DATASET_PATH={value}: no such file. Put the CSV at {path} or point DATASET_PATH at it "
            f"(unset, training downloads it to {DEFAULT_DATASET_PATH})."
        )
    return path


def _test_products_path(value: Optional[str]) -> Optional[Path]:
    # Set means "evaluate this file": a typo must not silently skip the evaluation.
    if value:
        if not Path(value).is_file():
            raise DatasetError(
                f"TEST_PRODUCTS_PATH={value}: no such file. Put the public test CSV there, "
                "or unset TEST_PRODUCTS_PATH to skip that evaluation."
            )
        return Path(value)
    return DEFAULT_TEST_PRODUCTS_PATH if DEFAULT_TEST_PRODUCTS_PATH.is_file() else None
