"""Artifacts are written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from categorizer import export


def test_write_all_makes_the_directory_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "artifacts" / "model.onnx"
    export.write_all({path: b"old"})
    assert export.write_all({path: b"new"}) == [path]
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["model.onnx"]


def test_a_failed_write_keeps_the_previous_file_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [path] = export.write_all({tmp_path / "model.onnx": b"old"})

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        export.write_all({path: b"new"})
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_one_file_that_cannot_be_written_leaves_every_file_as_it_was(tmp_path: Path) -> None:
    # The metrics' directory is a file: the new model must not replace the last run's.
    model, metrics = tmp_path / "model.onnx", tmp_path / "metrics.json"
    export.write_all({model: b"old model", metrics: b"old metrics"})
    (tmp_path / "taken").write_bytes(b"a file, not a directory")
    with pytest.raises(FileExistsError):  # mkdir of a path that is a file
        export.write_all({model: b"new model", tmp_path / "taken" / "metrics.json": b"new metrics"})
    assert model.read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "model.onnx", "taken"]


def test_a_target_that_is_a_directory_leaves_every_file_as_it_was(tmp_path: Path) -> None:
    model, metrics = tmp_path / "model.onnx", tmp_path / "metrics.json"
    model.write_bytes(b"old model")
    metrics.mkdir()
    with pytest.raises(IsADirectoryError):
        export.write_all({model: b"new model", metrics: b"new metrics"})
    assert model.read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "model.onnx"]
