"""score.py --engine spark, in Spark's local mode: the same rows, columns, order and
scores as the local engine and as onnxruntime run directly. One Spark session for the
module (its JVM takes seconds to start)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, List

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from batch import local
from batch import spark as spark_engine
from batch.job import Job, JobError, Refused
from batch.report import Progress
from tests.batch_files import (
    as_csv_text,
    assert_scored,
    catalogue,
    invalid_counts,
    read,
    typed,
    typed_fields,
    with_fields,
    write_csv,
)
from tests.datasets import skip_or_fail

pytestmark = pytest.mark.slow

ROWS = 600


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        skip_or_fail("no Java for Spark: apt-get install -y openjdk-17-jre-headless (.ci/run does)")
    session, _ = spark_engine.session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def products_table(test_products: List[Dict[str, str]]) -> pa.Table:
    return catalogue(test_products, ROWS)


def test_parquet_parts_give_the_local_engines_rows(
    spark: SparkSession, tmp_path: Path, products_table: pa.Table, model_path: str
) -> None:
    table = typed(products_table)
    parts = tmp_path / "catalogue.parquet"
    parts.mkdir()
    # The smaller part first: Spark alone would read the larger one first.
    pq.write_table(table.slice(0, 100), parts / "part-00000.parquet")
    pq.write_table(table.slice(100), parts / "part-00001.parquet", row_group_size=200)
    summary = spark_engine.run(Job(str(parts), str(tmp_path / "spark.parquet"), model_path))
    assert (summary.rows, summary.skipped) == (ROWS, 3)
    local.run(Job(str(parts), str(tmp_path / "local.parquet"), model_path, processes=1), Progress())
    by_spark, by_local = read(tmp_path / "spark.parquet"), read(tmp_path / "local.parquet")
    assert_scored(model_path, table, by_spark)
    assert by_spark.column_names == by_local.column_names
    for name in by_local.column_names:
        assert by_spark.column(name).to_pylist() == by_local.column(name).to_pylist(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "catalogue.parquet",
        "local.parquet",
        "spark.parquet",
    ]


def test_csv_in_csv_out(
    spark: SparkSession, tmp_path: Path, products_table: pa.Table, model_path: str
) -> None:
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    write_csv(products_table, source)
    spark_engine.run(Job(str(source), str(target), model_path))
    assert target.is_dir()  # parts written by Spark
    assert_scored(model_path, as_csv_text(products_table), read_csv_parts(target))


def read_csv_parts(directory: Path) -> pa.Table:
    """Spark's CSV parts, each with its header, in name order."""
    parts = sorted(p for p in directory.iterdir() if p.suffix == ".csv")
    return pa.concat_tables(read(part) for part in parts)


def test_strict_fails_and_writes_nothing(
    spark: SparkSession, tmp_path: Path, products_table: pa.Table, model_path: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(products_table, source)
    with pytest.raises(Refused, match="3 rows have a missing or blank title"):
        spark_engine.run(Job(str(source), str(target), model_path, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.parquet"]


def test_a_missing_title_column_fails_before_scoring(
    spark: SparkSession, tmp_path: Path, model_path: str
) -> None:
    source = tmp_path / "catalogue.parquet"
    pq.write_table(pa.table({"name": ["Caneca"]}), source)
    with pytest.raises(JobError, match="has no 'title' column"):
        spark_engine.run(Job(str(source), str(tmp_path / "scored.parquet"), model_path))


def test_a_job_that_fails_leaves_no_output(spark: SparkSession, tmp_path: Path, model_path: str) -> None:
    # Its footer reads, and only the job finds the title that is not UTF-8.
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(pa.table({"title": pa.array([b"Caneca azul", b"Colar \xff prata"], pa.binary())}), source)
    with pytest.raises(JobError, match=r"^the Spark job failed: .*is not text") as failed:
        spark_engine.run(Job(str(source), str(target), model_path))
    assert "\n" not in str(failed.value)  # the worker's own line, not Spark's traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.parquet"]


def test_an_output_spark_cannot_write_is_one_error(
    spark: SparkSession, tmp_path: Path, model_path: str
) -> None:
    # A list column has no CSV form: Spark refuses it as it plans the write.
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.csv"
    pq.write_table(pa.table({"title": ["Caneca azul"], "labels": [["a", "b"]]}), source)
    with pytest.raises(JobError, match=r"^the Spark job failed: .*(?i:csv)"):
        spark_engine.run(Job(str(source), str(target), model_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.parquet"]


def test_listing_fields_from_parquet_give_the_local_engines_rows(
    spark: SparkSession, tmp_path: Path, products_table: pa.Table, echo: str
) -> None:
    # The echo model's category is what it was fed: Spark's Arrow batches convert as ours.
    table = typed_fields(products_table)
    source = tmp_path / "catalogue.parquet"
    pq.write_table(table, source, row_group_size=200)
    by_spark = spark_engine.run(Job(str(source), str(tmp_path / "spark.parquet"), echo))
    by_local = local.run(Job(str(source), str(tmp_path / "local.parquet"), echo, processes=1), Progress())
    assert by_spark.invalid == by_local.invalid == invalid_counts(table)
    got_spark, got_local = read(tmp_path / "spark.parquet"), read(tmp_path / "local.parquet")
    assert_scored(echo, table, got_spark)
    assert got_spark.column("category").to_pylist() == got_local.column("category").to_pylist()


def test_listing_fields_from_csv_text_and_strict(
    spark: SparkSession, tmp_path: Path, products_table: pa.Table, echo: str
) -> None:
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    table = with_fields(products_table)
    write_csv(table, source)
    summary = spark_engine.run(Job(str(source), str(target), echo))
    assert summary.invalid == invalid_counts(table)
    assert_scored(echo, as_csv_text(table), read_csv_parts(target))
    shutil.rmtree(target)
    with pytest.raises(Refused) as refused:
        spark_engine.run(Job(str(source), str(target), echo, strict=True))
    assert str(refused.value) == (
        "--strict: 3 rows have a missing or blank title; 2 rows have an invalid 'seller_id' "
        "(not at most 64 characters); 5 rows have an invalid 'price' (not a number from 0 to "
        "1,000,000); 1 row has an invalid 'weight' (not a number from 0 to 1,000,000); 2 rows "
        "have an invalid 'express_delivery' (not true, false, 0 or 1); 1 row has an invalid "
        "'minimum_quantity' (not a number from 0 to 1,000,000)"
    )
    assert not target.exists()


def test_column_names_spark_would_parse_pass_through_as_the_local_engine_passes_them(
    spark: SparkSession, tmp_path: Path, model_path: str
) -> None:
    # A dot (`a.b`) failed in mapInArrow as a field of a struct; `Title` beside `title`
    # made Spark's CSV reader rename both, and the job said there was no title column.
    source = tmp_path / "catalogue.csv"
    source.write_text("title,a.b,Title,`x`\nVestido de festa azul,1,x,\nKit bebê,2,y,z\n", encoding="utf-8")
    spark_engine.run(Job(str(source), str(tmp_path / "spark.csv"), model_path))
    local.run(Job(str(source), str(tmp_path / "local.csv"), model_path, processes=1), Progress())
    by_spark, by_local = read_csv_parts(tmp_path / "spark.csv"), read(tmp_path / "local.csv")
    assert by_spark.column_names == ["title", "a.b", "Title", "`x`", "category", "confidence"]
    assert by_spark.column_names == by_local.column_names
    for name in by_local.column_names:
        assert by_spark.column(name).to_pylist() == by_local.column(name).to_pylist(), name
    assert spark.conf.get("spark.sql.caseSensitive") == "false"  # the session's own, put back


def test_nanosecond_timestamps_are_refused_with_the_way_round(
    spark: SparkSession, tmp_path: Path, model_path: str
) -> None:
    source = tmp_path / "catalogue.parquet"
    stamps = pa.array([1_514_800_800_123_456_789], pa.timestamp("ns"))  # what pandas writes
    pq.write_table(pa.table({"title": ["Kit bebê"], "creation_date": stamps}), source)
    with pytest.raises(
        JobError, match=r"Illegal Parquet type.*NANOS.*coerce_timestamps='us'.*--engine local"
    ):
        spark_engine.run(Job(str(source), str(tmp_path / "scored.parquet"), model_path))
