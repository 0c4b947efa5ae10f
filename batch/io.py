"""CSV and Parquet in record batches: read INPUT as a stream, write OUTPUT under a
temporary name beside it and rename it at the end, so that OUTPUT is whole or absent.

The format follows the name: `.csv`, `.parquet` (`.pq`), or a directory of Parquet parts
(as Spark writes them) for INPUT. CSV columns are read as text, every one of them: a
catalogue's `007` or `1e3` comes out as it went in, and a column that looks numeric in the
first rows cannot fail on a later one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Union

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch.job import JobError, one_line

# Bytes of CSV per record batch (pyarrow's default): a few thousand rows, small enough
# to keep every scoring process busy and memory flat, large enough to amortise the IPC.
CSV_BLOCK_BYTES = 1 << 20
# Rows per record batch read from Parquet, about what a CSV block holds.
PARQUET_BATCH_ROWS = 8192
# Rows per Parquet row group written: tens of MB of text, not one per record batch.
ROW_GROUP_ROWS = 65536
PARQUET_SUFFIXES = (".parquet", ".pq")


def format_of(path: str, role: str) -> str:
    """csv or parquet, from the name. A directory of parts is Parquet, and so is an
    INPUT URL (s3a://bucket/catalogue/, for the spark engine) not named .csv."""
    lower = path.lower().rstrip("/")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if role == "INPUT" and ("://" in path or os.path.isdir(path)):
        return "parquet"
    raise JobError(f"{role} {path}: unknown format; name it .csv or .parquet")


def use_jemalloc() -> None:
    """Arrow's buffers in jemalloc, for this process and the ones it starts afterwards.

    pyarrow 21's default pool, mimalloc, keeps much of what a long stream of batches frees:
    the local engine's reading process grew from 150 to 260 MB over 5 million rows with it,
    and stayed at 155 MB with jemalloc. Wheels built without jemalloc keep their default."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return
    pa.set_memory_pool(pool)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")  # read by spawned processes


class Input:
    """INPUT opened: its schema, its row count when the format says it, its batches."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.format = format_of(path, "INPUT")
        if not os.path.exists(path):
            raise JobError(f"INPUT {path}: no such file or directory")
        self.parts = _parquet_parts(path) if self.format == "parquet" else [path]
        with _errors(f"cannot read INPUT {path}"):
            self.schema = _csv_schema(path) if self.format == "csv" else _parquet_schema(self.parts)
            self.rows: Optional[int] = None if self.format == "csv" else _parquet_rows(self.parts)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows in file order (parts in name order), a record batch at a time."""
        with _errors(f"cannot read INPUT {self.path}"):
            if self.format == "csv":
                yield from _csv_reader(self.path, self.schema.names)
            else:
                for part in self.parts:
                    yield from pq.ParquetFile(part).iter_batches(batch_size=PARQUET_BATCH_ROWS)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """pyarrow's and the OS's errors as a one-line JobError that starts with `what`."""
    try:
        yield
    # ArrowException covers pyarrow's parse, type and I/O errors (ArrowIOError is also
    # an OSError); a bug of ours raises something else and keeps its traceback.
    except (pa.ArrowException, OSError) as exc:
        raise JobError(f"{what}: {one_line(exc)}") from None


def _csv_reader(path: str, names: List[str]) -> pacsv.CSVStreamingReader:
    # RFC 4180: quoted fields may hold separators, quotes ("") and line breaks.
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in names}),
    )


def _csv_schema(path: str) -> pa.Schema:
    # The header's names only: a first reader infers types, the real one reads text.
    names = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
    ).schema.names
    return pa.schema([(name, pa.string()) for name in names])


def _parquet_parts(path: str) -> List[str]:
    if not os.path.isdir(path):
        return [path]
    # Spark's and Hadoop's bookkeeping files (_SUCCESS, .crc) start with _ or .
    entries = sorted(e for e in os.listdir(path) if not e.startswith(("_", ".")))
    if any(os.path.isdir(os.path.join(path, e)) for e in entries):
        raise JobError(f"INPUT {path}: holds directories; only a flat directory of Parquet parts is read")
    if not entries:
        raise JobError(f"INPUT {path}: an empty directory, no Parquet parts")
    return [os.path.join(path, e) for e in entries]


def _parquet_schema(parts: List[str]) -> pa.Schema:
    schema: pa.Schema = pq.read_schema(parts[0])
    for part in parts[1:]:
        if not pq.read_schema(part).equals(schema):
            raise JobError(f"INPUT {part}: its columns differ from those of {parts[0]}")
    return schema


def _parquet_rows(parts: List[str]) -> int:
    return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)


class Output:
    """A writer of OUTPUT's format to a temporary file beside it: `commit` renames it onto
    OUTPUT (atomic on one filesystem); leaving the `with` block otherwise removes it."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.format = format_of(path, "OUTPUT")
        target = Path(path)
        if target.is_dir():
            raise JobError(f"OUTPUT {path}: is a directory; remove it or name another file")
        if not target.parent.is_dir():
            raise JobError(f"OUTPUT {path}: no such directory {target.parent}")
        self.temp = target.parent / f".{target.name}.partial-{os.getpid()}"
        self._schema = schema
        self._pending: List[pa.RecordBatch] = []
        self._writer: Union[pacsv.CSVWriter, pq.ParquetWriter, None] = None

    def __enter__(self) -> Output:
        try:
            with self._errors():
                if self.format == "csv":
                    self._writer = pacsv.CSVWriter(str(self.temp), self._schema)
                else:
                    self._writer = pq.ParquetWriter(str(self.temp), self._schema)
        except BaseException:
            # A `with` whose __enter__ raises never calls __exit__, which removes the file.
            self.temp.unlink(missing_ok=True)
            raise
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        with self._errors():
            if isinstance(self._writer, pacsv.CSVWriter):
                self._writer.write_batch(batch)
                return
            self._pending.append(batch)
            if sum(b.num_rows for b in self._pending) >= ROW_GROUP_ROWS:
                self._flush()

    def commit(self) -> None:
        with self._errors():
            self._close()
            os.replace(self.temp, self.path)

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if self._writer is not None:
            # Abandoned (an error, an interrupt): closing only frees the file, which goes;
            # an error here would hide the one that got us here.
            with contextlib.suppress(pa.ArrowException, OSError):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):  # committed, or never created
            self.temp.unlink()

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return _errors(f"cannot write OUTPUT {self.path}")

    def _flush(self) -> None:
        assert isinstance(self._writer, pq.ParquetWriter)
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=ROW_GROUP_ROWS)
            self._pending = []

    def _close(self) -> None:
        if isinstance(self._writer, pq.ParquetWriter):
            self._flush()
        assert self._writer is not None
        self._writer.close()
        self._writer = None
