"""bench/batch.py's input and report (the timings themselves are not tested)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch.io import Input
from bench import batch as bench
from tests.datasets import training_csv


def test_synthesised_rows_are_training_rows_without_their_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASET_PATH", str(training_csv()))
    monkeypatch.setattr(bench, "DATA", tmp_path)
    paths = bench.synthesise(40_000)  # more than the file has: it repeats
    source = Input(str(paths["csv"]))
    assert "category" not in source.schema.names
    assert {"title", "concatenated_tags"} <= set(source.schema.names)
    assert sum(b.num_rows for b in source.batches()) == 40_000
    assert pq.ParquetFile(paths["parquet"]).metadata.num_rows == 40_000
    assert bench.synthesise(40_000) == paths  # made once, then reused


def test_report_gives_each_round_its_ratios() -> None:
    run = {
        "engine": "local",
        "input": "9.csv",
        "rows": 9,
        "seconds": 1.0,
        "rows_per_s": 9.0,
        "peak_rss_mb": 1.0,
    }
    round_ = {"ceiling_file_order": 10.0, "ceiling_sorted": 12.0, "runs": [run, {**run, "engine": "spark"}]}
    round_["ratios"] = bench._ratios(round_)
    assert round_["ratios"] == {
        "local / ceiling (file order)": 0.9,
        "local / ceiling (sorted)": 0.75,
        "spark / local": 1.0,
    }
    results = {"rows": 9, "machine": {"cpus": 2, "cpu": "x"}, "rounds": [round_], "memory": [run]}
    text = "\n".join(bench.report(results))
    assert "round 1: ceiling 10 (file order), 12 (sorted) rows/s" in text
    assert "spark / local" in text
