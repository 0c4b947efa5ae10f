"""Extraction: read the Elo7 listings CSV, downloading it when it is missing."""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, List, Optional, Union

import pandas as pd
from tqdm import tqdm

DATASET_URL = "https://elo7-datasets.s3.amazonaws.com/data_scientist_position/elo7_recruitment_dataset.csv"
DEFAULT_DATASET_PATH = Path("data/elo7_recruitment_dataset.csv")

# The columns read as text, where pandas' missing-value words ("NA", "null") are words.
TEXT_COLUMNS = ("title", "concatenated_tags", "query")
COLUMNS = (
    "product_id",
    "seller_id",
    "query",
    "search_page",
    "position",
    "title",
    "concatenated_tags",
    "creation_date",
    "price",
    "weight",
    "express_delivery",
    "minimum_quantity",
    "view_counts",
    "order_counts",
    "category",
)
CATEGORIES = (
    "Bebê",
    "Bijuterias e Jóias",
    "Decoração",
    "Lembrancinhas",
    "Outros",
    "Papel e Cia",
)

# A stalled connection should fail the notebook, not hang it.
DOWNLOAD_TIMEOUT_SECONDS = 30
_CHUNK_BYTES = 1 << 16

PathLike = Union[str, "os.PathLike[str]"]


class DatasetError(RuntimeError):
    """The dataset is missing, unreachable or not the Elo7 listings file."""


def dataset_path() -> Path:
    """DATASET_PATH from the environment, else the documented default."""
    return Path(os.environ.get("DATASET_PATH") or DEFAULT_DATASET_PATH)


def download(url: str, dest: PathLike, timeout: float = DOWNLOAD_TIMEOUT_SECONDS) -> Path:
    """Fetch `url` to `dest` with a progress bar; the file appears only when complete."""
    dest = Path(dest)
    made = _missing_dirs(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial = _fetch(url, dest, timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # A failed run leaves nothing behind, not even the directories it made.
        for directory in reversed(made):
            directory.rmdir()
        raise DatasetError(
            f"could not download the dataset from {url} ({exc}); are you offline? "
            f"Put the CSV at {dest} or point DATASET_PATH at it."
        ) from exc
    os.replace(partial, dest)
    return dest


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Download to a temporary file beside `dest` and return its path; on failure, remove it."""
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                _copy_with_progress(response, tmp, total, dest.name)
        except BaseException:
            os.unlink(tmp.name)
            raise
    return tmp.name


def _missing_dirs(directory: Path) -> List[Path]:
    """`directory` and its ancestors that do not exist yet, outermost first."""
    return [d for d in reversed([directory, *directory.parents]) if not d.exists()]


def _copy_with_progress(src: IO[bytes], dst: IO[bytes], total: Optional[int], name: str) -> None:
    copied = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
        for chunk in iter(lambda: src.read(_CHUNK_BYTES), b""):
            dst.write(chunk)
            copied += len(chunk)
            bar.update(len(chunk))
    # Python 3.9's HTTPResponse.read returns b"" when the server closes early, as at the end:
    # a cut download would otherwise be kept as the dataset.
    if total is not None and copied != total:
        raise http.client.IncompleteRead(b"", total - copied)


def load(path: Optional[PathLike] = None, url: str = DATASET_URL) -> pd.DataFrame:
    """The listings as a DataFrame, validated; downloaded first if `path` is missing."""
    path = Path(path) if path is not None else dataset_path()
    if not path.exists():
        download(url, path)
    try:
        frame = read_listings(path)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty") from exc
    validate(frame, str(path))
    return frame


def read_listings(path: PathLike) -> pd.DataFrame:
    """A CSV of listings as it is, unvalidated (the training file, the public test file)."""
    # A converter bypasses pandas' missing-value words: a title "NA" or "null" is a
    # title, and only an empty field is missing text, as the API reads them.
    return pd.read_csv(path, converters={name: _text for name in TEXT_COLUMNS})


def _text(value: str) -> Union[str, float]:
    return value if value else math.nan


def validate(frame: pd.DataFrame, source: str) -> None:
    """Fail with a message naming what is wrong with the file."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise DatasetError(f"{source}: no rows")
    unknown = sorted(set(frame["category"].dropna()) - set(CATEGORIES))
    if unknown:
        raise DatasetError(f"{source}: unknown category {unknown[0]!r} (expected one of {CATEGORIES})")
    if frame["category"].isna().any():
        raise DatasetError(f"{source}: {int(frame['category'].isna().sum())} row(s) without a category")


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        shutil.copyfileobj(handle, _HashWriter(digest))
    return digest.hexdigest()


class _HashWriter:
    """File-like sink so shutil streams the file into the digest."""

    def __init__(self, digest: hashlib._Hash) -> None:
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return len(data)
