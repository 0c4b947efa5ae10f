"""Which model file a server runs: a stable identifier, the same in every language."""

from __future__ import annotations

import hashlib

# Hex digits of the file's SHA-256 kept: enough to tell models apart, short enough to read.
VERSION_DIGITS = 12


def model_version(path: str) -> str:
    """The first VERSION_DIGITS hex digits of the model file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:VERSION_DIGITS]
