"""Artifacts are written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from categorizer import export


def test_write_bytes_makes_the_directory_and_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "artifacts" / "model.onnx"
    export.write_bytes(path, b"old")
    export.write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["model.onnx"]


def test_a_failed_write_keeps_the_previous_file_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = export.write_bytes(tmp_path / "model.onnx", b"old")

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        export.write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]
