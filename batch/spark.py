"""The spark engine: the same scoring as a pyspark job, for catalogues one machine cannot
take. `python score.py ... --engine spark` runs it on `--master` (pyspark's default:
local[*]); `spark-submit score.py ... --engine spark` runs it on a cluster.

- The ONNX file goes to the executors with SparkContext.addFile, and this code (runtime/
  and batch/, zipped) with addPyFile; each Python worker loads one session, once.
- Rows are scored by `DataFrame.mapInArrow`, Arrow batches in and out, through the local
  engine's code (batch.scoring). It is mapInPandas without pandas: the input columns pass
  through as Arrow data, untouched, where pandas would turn a nullable integer into a float.
- Output order is input order: one file is split in file order, and a directory's parts
  are read one by one, in name order (Spark alone would read the largest first).
- OUTPUT is a directory of parts, written by Spark. On this machine's filesystem it is
  written beside OUTPUT under a temporary name and renamed; on object storage (a URL such
  as s3a://...) Spark's committer writes it in place and adds _SUCCESS last.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
from py4j.protocol import Py4JJavaError  # type: ignore[import-untyped]
from pyspark import SparkFiles
from pyspark.accumulators import Accumulator
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import FloatType, StringType, StructField, StructType

from batch import fields, scoring
from batch.io import Input, format_of
from batch.job import Job, JobError, Refused, one_line
from batch.report import Summary
from runtime.categorizer import INPUT_TITLE, LISTING_FIELDS, Categorizer

ROOT = Path(__file__).resolve().parent.parent
# RFC 4180, as the local engine reads and writes it: quotes doubled (Spark's default
# escape is \), line breaks inside quoted fields (multiLine: one task reads a whole file,
# which Spark cannot split then; give it Parquet or many CSV parts), white space kept
# (Spark's writer trims it by default), a bad row fails the job.
CSV_OPTIONS = {
    "header": "true",
    "escape": '"',
    "multiLine": "true",
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
    "mode": "FAILFAST",
}


def run(job: Job) -> Summary:
    started = time.perf_counter()
    _check_java()
    # The model is checked here, before Spark starts: a bad file fails in seconds.
    inputs = Categorizer.load(job.model).inputs
    _check_paths(job)
    if _is_local(job.input):  # its header or footers, read here: a bad file fails before the JVM starts
        names = Input(job.input).schema.names
        scoring.check_columns(names, job.input)
        scoring.model_columns(names, inputs, job.input)  # Spark would rename a repeated name
    spark, owned = session(job.master)
    try:
        with _case_sensitive(spark):
            summary = _score(spark, job, inputs)
    finally:
        if owned:
            spark.stop()
    summary.seconds = time.perf_counter() - started
    return summary


# The last line of a Python worker's JobError, in the traceback Spark forwards as text.
_WORKER_ERROR = re.compile(r"batch\.job\.JobError: (.+)")


@contextlib.contextmanager
def _job_errors() -> Iterator[None]:
    """A Spark job that fails on the INPUT (a value a worker refuses: its JobError) or on
    the OUTPUT (a column Spark cannot write: an AnalysisException) as the CLI's one error
    line, not Spark's traceback. Anything else (a bug in a worker, a lost executor) is
    raised as Spark raised it."""
    try:
        yield
    except AnalysisException as exc:
        raise JobError(f"the Spark job failed: {one_line(exc)}") from None
    except (PySparkException, Py4JJavaError) as exc:
        found = _WORKER_ERROR.findall(str(exc))
        if not found:
            raise
        raise JobError(f"the Spark job failed: {found[-1]}") from None


def _score(spark: SparkSession, job: Job, inputs: Sequence[str]) -> Summary:
    context = spark.sparkContext
    context.addFile(os.path.abspath(job.model))
    context.addPyFile(_code_zip())
    frame = _read(spark, job.input)
    names = frame.columns
    scoring.check_columns(names, job.input)
    take = scoring.model_columns(names, inputs, job.input)
    frame = frame.toDF(*_placeholders(names, take))
    if job.strict:
        # Before anything is written, wherever OUTPUT is: a pass over the title and the
        # listing fields the model takes.
        with _job_errors():
            problems = _problems(spark, frame.select([INPUT_TITLE, *_listing(take)]))
        _refuse(problems)
    rows: Accumulator[int] = context.accumulator(0)
    skipped: Accumulator[int] = context.accumulator(0)
    invalid = _counters(spark, _listing(take))
    score = functools.partial(_score_batches, os.path.basename(job.model), take, rows, skipped, invalid)
    fields = [StructField(scoring.CATEGORY, StringType()), StructField(scoring.CONFIDENCE, FloatType())]
    scored = frame.mapInArrow(score, StructType([*frame.schema.fields, *fields]))
    scored = scored.toDF(*names, scoring.CATEGORY, scoring.CONFIDENCE)
    target = _temporary(job.output) if _is_local(job.output) else job.output
    try:
        with _job_errors():
            _write(scored, target, format_of(job.output, "OUTPUT"))
        if target != job.output:
            os.replace(target, job.output)
    finally:
        if target != job.output and os.path.exists(target):  # a failed job's parts
            shutil.rmtree(target)
    return Summary(rows=rows.value, skipped=skipped.value, invalid=_values(invalid))


@contextlib.contextmanager
def _case_sensitive(spark: SparkSession) -> Iterator[None]:
    """INPUT's column names compared as the local engine compares them, case and all.
    By Spark's default a `Title` column is a second `title`: its CSV reader renames both
    (`title0`, `Title1`) and a select cannot tell them apart. The session's own setting
    is put back after the job (it may be a notebook's)."""
    key = "spark.sql.caseSensitive"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    try:
        yield
    finally:
        spark.conf.set(key, before or "false")


def _placeholders(names: Sequence[str], take: Sequence[str]) -> List[str]:
    """INPUT's column names for mapInArrow: those the model reads as they are, the others
    (passed through untouched) as `_column_<position>`, renamed back after. mapInArrow
    resolves its input's columns by name, and a name with a dot in it (`a.b`) fails
    there as a field of a struct `a` that is not there."""
    return [name if name in take else f"_column_{i}" for i, name in enumerate(names)]


def _score_batches(
    model_name: str,
    take: List[str],
    rows: Accumulator[int],
    skipped: Accumulator[int],
    invalid: Dict[str, Accumulator[int]],
    batches: Iterable[pa.RecordBatch],
) -> Iterable[pa.RecordBatch]:
    """Runs in the executors' Python workers: one model per worker, kept across tasks."""
    model = scoring.model_for(SparkFiles.get(model_name))
    for batch in batches:
        scored = scoring.score(model, batch.select(take))
        schema = scoring.output_schema(batch.schema)
        rows.add(batch.num_rows)
        skipped.add(len(scored.blank))
        for name, positions in scored.invalid.items():
            invalid[name].add(len(positions))
        yield scoring.with_scores(batch, scored, schema)


def _listing(take: Sequence[str]) -> List[str]:
    return [name for name in take if name in LISTING_FIELDS]


def _counters(spark: SparkSession, names: Sequence[str]) -> Dict[str, Accumulator[int]]:
    return {name: spark.sparkContext.accumulator(0) for name in names}


def _values(counters: Dict[str, Accumulator[int]]) -> Dict[str, int]:
    return {name: counter.value for name, counter in counters.items()}


def _problems(spark: SparkSession, frame: DataFrame) -> Dict[str, int]:
    """Rows with a blank title ("title") and invalid values of each listing field in
    `frame`: accumulated by the workers of a job that writes nothing, as collect() would
    leave a socket open. A retried task may count its rows twice: these counts say how
    many, not whether, and the first decides."""
    counters = _counters(spark, frame.columns)
    frame.mapInArrow(functools.partial(_count_problems, counters), frame.schema).count()
    return _values(counters)


def _count_problems(
    counters: Dict[str, Accumulator[int]], batches: Iterable[pa.RecordBatch]
) -> Iterable[pa.RecordBatch]:
    for batch in batches:  # scoring's own rules, so that both passes agree
        counters[INPUT_TITLE].add(len(scoring.blank_in(batch.column(INPUT_TITLE))))
        for name, field in scoring.listing_fields(batch.select(_listing(batch.schema.names))).items():
            counters[name].add(int(field.invalid.sum()))
    return iter(())


def _refuse(problems: Dict[str, int]) -> None:
    """--strict's one line: how many rows of each kind it refuses (Spark has no row numbers)."""
    said = [
        f"{count:,} {'row has' if count == 1 else 'rows have'} "
        + (
            "a missing or blank title"
            if name == INPUT_TITLE
            else f"an invalid {name!r} (not {fields.rule(name)})"
        )
        for name, count in problems.items()
        if count
    ]
    if said:
        raise Refused(f"--strict: {'; '.join(said)}")


def _read(spark: SparkSession, path: str) -> DataFrame:
    parts = _parts(path)
    try:
        if format_of(path, "INPUT") == "csv":
            # Every column as text, and "" never null: what the local engine reads.
            frames = [spark.read.options(**CSV_OPTIONS).csv(part).na.fill("") for part in parts]
        else:
            frames = [spark.read.parquet(part) for part in parts]
    # A path that is not there, or not Parquet: found while Spark plans, before any job.
    # A bad row found while the job runs fails the job, with Spark's own error.
    except AnalysisException as exc:
        raise JobError(f"cannot read INPUT {path}: {one_line(exc)}{_hint(exc)}") from None
    return functools.reduce(DataFrame.union, frames)


def _hint(exc: AnalysisException) -> str:
    # pandas writes its datetimes as Parquet nanoseconds, which Spark cannot read; the
    # local engine passes them through.
    if "TIMESTAMP(NANOS" not in str(exc):
        return ""
    return (
        ". Spark keeps timestamps to the microsecond: write them so (pandas: to_parquet(..., "
        "coerce_timestamps='us')) or score the file with --engine local"
    )


def _parts(path: str) -> List[str]:
    """A local directory's parts in name order; anything else as Spark lists it."""
    if not (_is_local(path) and os.path.isdir(path)):
        return [path]
    names = sorted(n for n in os.listdir(path) if not n.startswith(("_", ".")))
    if not names:
        raise JobError(f"INPUT {path}: an empty directory, no parts")
    return [os.path.join(path, n) for n in names]


def _write(frame: DataFrame, target: str, form: str) -> None:
    writer = frame.write.mode("errorifexists")
    if form == "csv":
        writer.options(**CSV_OPTIONS).csv(target)
    else:
        writer.parquet(target)


def session(master: Optional[str]) -> Tuple[SparkSession, bool]:
    """The active session (a test's, a notebook's), else a new one that we stop."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    # spark-submit sets the gateway variables and has chosen the Pythons; run by
    # `python score.py`, the workers of a local master must be this Python (its
    # onnxruntime and pyarrow), not whichever `python3` comes first on PATH.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted and (master or "local").startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("elo7-score")
    if master:
        builder = builder.master(master)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _check_java() -> None:
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise JobError(
            "the spark engine needs Java 17 or newer: install it (Debian: apt-get install -y "
            "openjdk-17-jre-headless) or set JAVA_HOME"
        )


def _check_paths(job: Job) -> None:
    format_of(job.input, "INPUT")
    format_of(job.output, "OUTPUT")
    if _is_local(job.output):
        if os.path.exists(job.output):
            raise JobError(f"OUTPUT {job.output}: exists; Spark writes a directory, remove it first")
        if not os.path.isdir(os.path.dirname(os.path.abspath(job.output))):
            raise JobError(f"OUTPUT {job.output}: no such directory")


def _is_local(path: str) -> bool:
    """A path of this machine's filesystem, not a URL (s3a://, gs://, hdfs://, file://)."""
    return "://" not in path


def _temporary(output: str) -> str:
    target = Path(output)
    return str(target.parent / f".{target.name}.partial-{os.getpid()}")


def _code_zip() -> str:
    """runtime/ and batch/ zipped, for addPyFile: executors import them from it. Named
    after its content: Spark refuses a second file of one name from another path, and a
    session that runs several jobs (a test's, a notebook's) adds the same one again."""
    sources = [source for package in ("runtime", "batch") for source in sorted((ROOT / package).glob("*.py"))]
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"score_code_{digest}.zip"
    if not path.exists():
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        with zipfile.ZipFile(partial, "w") as archive:
            for source in sources:
                archive.write(source, f"{source.parent.name}/{source.name}")
        os.replace(partial, path)
    return str(path)
