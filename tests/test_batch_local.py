"""score.py with the local engine: round trips, blank titles, and the failures that must
leave no OUTPUT behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch import cli, io
from bench import procs
from runtime.categorizer import Categorizer, Column
from tests.batch_files import (
    LISTING_KINDS,
    as_csv_text,
    assert_scored,
    catalogue,
    echo_model,
    invalid_counts,
    listing_feed,
    read,
    typed,
    typed_fields,
    with_fields,
    write_csv,
)
from tests.datasets import ROOT

ROWS = 600  # a little over the public test file: every product, some twice


@pytest.fixture(scope="module")
def products_table(test_products: List[Dict[str, str]]) -> pa.Table:
    return catalogue(test_products, ROWS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


def test_csv_round_trip_through_score_py(tmp_path: Path, products_table: pa.Table, model_path: str) -> None:
    # The real entry point, and a pool of two processes.
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    write_csv(products_table, source)
    result = subprocess.run(
        [sys.executable, "score.py", str(source), str(target), "--model", model_path, "--processes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"scored {ROWS} rows in ")
    assert "3 skipped (blank title)" in result.stdout
    assert_scored(model_path, as_csv_text(products_table), read(target))
    assert leftovers(tmp_path) == []


def test_parquet_keeps_column_types_and_nulls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, model_path: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    table = typed(products_table)
    pq.write_table(table, source, row_group_size=100)  # several row groups and batches
    code, out, _ = run(capsys, str(source), str(target), "--model", model_path, "--processes", "1")
    assert code == 0
    assert "3 skipped" in out
    got = pq.read_table(target)
    assert got.schema.field("product_id").type == pa.int64()
    assert got.schema.field("creation_date").type == pa.timestamp("us")
    assert got.schema.field("confidence").type == pa.float32()
    assert_scored(model_path, table, got)


def test_a_directory_of_parts_is_read_in_name_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, model_path: str
) -> None:
    parts = tmp_path / "catalogue.parquet"
    parts.mkdir()
    # The larger part second: name order, not size order (Spark's), is the input order.
    pq.write_table(products_table.slice(0, 100), parts / "part-00000.parquet")
    pq.write_table(products_table.slice(100), parts / "part-00001.parquet")
    (parts / "_SUCCESS").write_bytes(b"")
    target = tmp_path / "scored.parquet"
    assert run(capsys, str(parts), str(target), "--model", model_path, "--processes", "1")[0] == 0
    assert_scored(model_path, products_table, read(target))


def test_the_service_wrapper_gives_the_same_categories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, model_path: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(products_table, source)
    assert run(capsys, str(source), str(target), "--model", model_path, "--processes", "1")[0] == 0
    got = pq.read_table(target)
    titles = products_table.column("title").to_pylist()
    rows = [i for i, t in enumerate(titles) if t and not t.isspace()]
    tags = [
        t if t and not t.isspace() else "" for t in products_table.column("concatenated_tags").to_pylist()
    ]
    # The listing fields as the batch scorer reads them (the README's rules, as batch_files has them).
    model = Categorizer.load(model_path)
    columns: Dict[str, Column] = {
        "title": [titles[i] for i in rows],
        "concatenated_tags": [tags[i] for i in rows],
    }
    for name in model.inputs:
        if name in LISTING_KINDS and name in products_table.column_names:
            values = products_table.column(name).to_pylist()
            columns[name] = listing_feed(name, [values[i] for i in rows]).tolist()
    service, _ = model.predict_with_probabilities(columns)
    assert [got.column("category")[i].as_py() for i in rows] == service


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("catalogue.csv", b"name,price\nCaneca,10\n", "has no 'title' column (its columns: name, price)"),
        ("catalogue.csv", b"title,category\nCaneca,x\n", "already has a 'category' column"),
        (
            "catalogue.csv",
            b"title,title\nCaneca,Colar\n",
            "INPUT {source} has 2 columns named 'title'; the model reads one",
        ),
        (
            "catalogue.csv",
            b"title,price,price\nCaneca,12,13\n",
            "INPUT {source} has 2 columns named 'price'; the model reads one",
        ),
        ("catalogue.csv", b"", "cannot read INPUT"),
        ("catalogue.csv", b"title,tags\nCaneca \xff azul,x\n", "cannot read INPUT"),
        ("catalogue.parquet", b"PAR1 not really parquet", "cannot read INPUT"),
        ("catalogue.json", b"{}", "unknown format"),
        ("missing.csv", None, "no such file or directory"),
    ],
)
def test_an_unusable_input_fails_with_one_line_and_no_output(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model_path: str,
    name: str,
    content: bytes,
    message: str,
) -> None:
    source, target = tmp_path / name, tmp_path / "scored.csv"
    if content is not None:
        source.write_bytes(content)
    code, out, err = run(capsys, str(source), str(target), "--model", model_path, "--processes", "1")
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert message.format(source=source) in err
    assert err.count("\n") == 1
    assert not target.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("engine", ["local", "spark"])
@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("same path", "is INPUT {source}; name another file"),
        ("a link to it", "is INPUT {source}; name another file"),
        ("one of its parts", "is inside INPUT {source}; name a path outside it"),
        ("a new file among its parts", "is inside INPUT {source}; name a path outside it"),
    ],
)
def test_an_output_that_names_the_input_is_refused_and_the_input_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: str, engine: str, how: str, says: str
) -> None:
    source = tmp_path / "catalogue.csv"
    source.write_text("title\nCaneca azul\n")
    target = source
    if how == "a link to it":
        target = tmp_path / "scored.csv"
        target.symlink_to(source)
    if how in ("one of its parts", "a new file among its parts"):
        source = tmp_path / "parts"
        source.mkdir()
        pq.write_table(pa.table({"title": ["Caneca azul"]}), source / "part-0.parquet")
        target = source / ("part-0.parquet" if how == "one of its parts" else "scored.parquet")
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, out, err = run(capsys, str(source), str(target), "--model", model_path, "--engine", engine)
    assert code == 2
    assert out == ""
    assert err == f"error: OUTPUT {target} {says.format(source=source)}\n"
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def test_a_title_that_is_not_utf8_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: str
) -> None:
    # Parquet's footer gives a binary column; its text is decoded (and refused) by a scorer.
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(pa.table({"title": pa.array([b"Caneca azul", b"Colar \xff prata"], pa.binary())}), source)
    code, _, err = run(capsys, str(source), str(target), "--model", model_path, "--processes", "2")
    assert code == 2
    assert err.startswith("error: column 'title' is not text: ")
    assert err.count("\n") == 1
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_model_that_does_not_load_fails_before_any_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table
) -> None:
    source, target, model = tmp_path / "catalogue.csv", tmp_path / "scored.csv", tmp_path / "model.onnx"
    write_csv(products_table, source)
    model.write_bytes(b"\x08\x07garbage" * 50)
    code, _, err = run(capsys, str(source), str(target), "--model", str(model), "--processes", "2")
    assert code == 2
    assert err.startswith("error: cannot load model")
    assert err.count("\n") == 1
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_file_broken_halfway_leaves_no_partial_output(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    products_table: pa.Table,
    model_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    write_csv(products_table, source)
    with source.open("a", encoding="utf-8") as f:
        f.write('"one field too many",' * 20 + "\n")
    target.write_text("the previous run's output\n")
    monkeypatch.setattr(io, "CSV_BLOCK_BYTES", 4096)  # many batches are written before the bad one
    code, _, err = run(capsys, str(source), str(target), "--model", model_path, "--processes", "1")
    assert code == 2
    assert "cannot read INPUT" in err
    assert target.read_text() == "the previous run's output\n"
    assert leftovers(tmp_path) == []


def test_an_output_that_cannot_be_opened_leaves_no_partial_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: str
) -> None:
    # A list column cannot be written to CSV: the writer fails as it opens the file.
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.csv"
    pq.write_table(pa.table({"title": ["Caneca"], "labels": [["a", "b"]]}), source)
    code, _, err = run(capsys, str(source), str(target), "--model", model_path, "--processes", "1")
    assert code == 2
    assert err.startswith(f"error: cannot write OUTPUT {target}")
    assert leftovers(tmp_path) == []


def test_scoring_processes_die_with_their_parent(
    tmp_path: Path, test_products: List[Dict[str, str]], model_path: str
) -> None:
    # They ignore SIGTERM (the parent's to act on): killed with SIGKILL, the parent
    # left them blocked on their queue for good.
    proc = _start_job(tmp_path, test_products, model_path, "2")
    try:
        _wait_for(tmp_path, proc, _writing)
        scorers = _scorers(proc)
        assert len(scorers) == 2
        proc.kill()
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(_alive, scorers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, scorers))
    finally:
        _end(proc)


def _scorers(proc: subprocess.Popen[str]) -> List[int]:
    return [pid for pid in procs.children(proc.pid) if "spawn_main" in procs._cmdline(pid)]


def _scorer_importing(proc: subprocess.Popen[str]) -> bool:
    """Whether a scoring process has Python's own Ctrl-C handler: its interpreter is up
    and it imports what its parent sent, before the pool's initializer has run."""
    for pid in _scorers(proc):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            caught = int(status.split("SigCgt:")[1].split()[0], 16)
            if caught & (1 << (signal.SIGINT - 1)):
                return True
    return False


def _alive(pid: int) -> bool:
    try:  # a zombie (state Z) is dead: only its exit status is left, for a reaper
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _writing(directory: Path) -> bool:
    """Whether scored rows are being written: the pool is up (a stop while its processes
    start is another case: they fail reading what their parent sent them)."""
    return any((directory / name).stat().st_size > 64 * 1024 for name in leftovers(directory))


def _stop(proc: subprocess.Popen[str], how: str) -> None:
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "group sigterm":  # `timeout`: the scoring processes get it too
        os.killpg(proc.pid, signal.SIGTERM)
    elif how == "group sigint":  # Ctrl-C on a terminal
        os.killpg(proc.pid, signal.SIGINT)
    else:  # one scoring process killed, as the OOM killer does
        scorers = _scorers(proc)
        assert scorers, "no scoring process"
        os.kill(scorers[0], signal.SIGKILL)


STOPPED_BY_CTRL_C = "error: stopped (Ctrl-C); OUTPUT was not written\n"


def _end(proc: subprocess.Popen[str]) -> None:
    """Whatever the test found: the job's process group killed, reaped, its pipe closed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _default_stops() -> None:
    # A shell runs a background job (a CI script started with `&`) with SIGINT ignored,
    # and the job would inherit that: Ctrl-C must reach it as it does from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_job(
    tmp_path: Path, test_products: List[Dict[str, str]], model_path: str, processes: str
) -> subprocess.Popen[str]:
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    write_csv(catalogue(test_products, 200_000), source)  # seconds of work
    command = [sys.executable, "score.py", str(source), str(target), "--model", model_path]
    return subprocess.Popen(
        [*command, "--processes", processes],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_stops,
    )


def _wait_for(tmp_path: Path, proc: subprocess.Popen[str], ready: Callable[[Path], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready(tmp_path), "the job never got there"


@pytest.mark.parametrize(
    ("how", "processes", "code", "said", "when"),
    [
        ("sigterm", "1", 128 + signal.SIGTERM, "", "writing"),
        # With a pool, the job used to hang in the pool's shutdown, its partial file left.
        ("group sigterm", "2", 128 + signal.SIGTERM, "", "writing"),
        ("group sigint", "2", 130, STOPPED_BY_CTRL_C, "writing"),
        # While the scoring processes start: they used to print their own tracebacks.
        ("group sigint", "2", 130, STOPPED_BY_CTRL_C, "starting"),
        (
            "scorer killed",
            "2",
            2,
            "error: a scoring process ended abruptly (killed, or out of memory?); ",
            "writing",
        ),
    ],
)
def test_a_stopped_job_ends_and_leaves_no_partial_output(
    tmp_path: Path,
    test_products: List[Dict[str, str]],
    model_path: str,
    how: str,
    processes: str,
    code: int,
    said: str,
    when: str,
) -> None:
    proc = _start_job(tmp_path, test_products, model_path, processes)
    target = tmp_path / "scored.csv"
    try:
        _wait_for(tmp_path, proc, _writing if when == "writing" else lambda _: _scorer_importing(proc))
        _stop(proc, how)
        _, stderr = proc.communicate(timeout=60)
    finally:
        _end(proc)
    assert proc.returncode == code, stderr
    assert stderr.startswith(said), stderr
    assert stderr.count("\n") == (1 if said else 0), stderr  # one line at most, no traceback
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_strict_fails_on_a_blank_title_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, model_path: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(products_table, source)
    code, out, err = run(
        capsys, str(source), str(target), "--model", model_path, "--processes", "1", "--strict"
    )
    assert code == 1
    assert out == ""
    assert err == "error: --strict: row 8 (counting from 1) has a missing or blank title\n"
    assert not target.exists()
    assert leftovers(tmp_path) == []
    clean = products_table.filter(
        pa.array([bool(t and t.strip()) for t in products_table.column("title").to_pylist()])
    )
    pq.write_table(clean, source)
    assert (
        run(capsys, str(source), str(target), "--model", model_path, "--processes", "1", "--strict")[0] == 0
    )


def test_the_batch_scorer_imports_neither_aiohttp_nor_pyspark() -> None:
    code = (
        "import sys, batch.cli, batch.local, batch.scoring, runtime.categorizer; "
        "print(sorted(m for m in ('aiohttp', 'pyspark', 'service') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def invalid_part(table: pa.Table) -> str:
    counts = invalid_counts(table)
    return ", ".join(f"{counts[name]} {name}" for name in table.column_names if counts.get(name))


def test_listing_fields_from_csv_text_reach_their_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, echo: str
) -> None:
    # The echo model's category is what it was fed: each row's own title and fields, in
    # input order, after the engine sorted each batch's rows by length.
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    table = with_fields(products_table)
    write_csv(table, source)
    code, out, _ = run(capsys, str(source), str(target), "--model", echo, "--processes", "2")
    assert code == 0
    assert f"3 skipped (blank title), invalid values read as unknown: {invalid_part(table)}; wrote" in out
    assert_scored(echo, as_csv_text(table), read(target))


def test_listing_fields_from_parquet_types_reach_their_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, echo: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    table = typed_fields(products_table)
    pq.write_table(table, source, row_group_size=100)
    code, out, _ = run(capsys, str(source), str(target), "--model", echo, "--processes", "1")
    assert code == 0
    assert f"invalid values read as unknown: {invalid_part(table)};" in out
    got = pq.read_table(target)
    assert got.schema.field("seller_id").type == pa.float64()  # the file's own values, untouched
    assert got.schema.field("express_delivery").type == pa.bool_()
    assert_scored(echo, table, got)
    categories = got.column("category").to_pylist()
    assert categories[0].split("|")[2] == str(int(table.column("seller_id")[0].as_py()))


def test_listing_fields_absent_from_input_are_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table, echo: str
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    table = products_table.select(["title", "concatenated_tags", "price"])
    pq.write_table(table, source)
    assert run(capsys, str(source), str(target), "--model", echo, "--processes", "1")[0] == 0
    got = pq.read_table(target)
    assert_scored(echo, table, got)
    assert all(c.endswith("|NaN|NaN|NaN") for c in got.column("category").to_pylist() if c)


def test_a_model_without_listing_inputs_reads_no_listing_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], products_table: pa.Table
) -> None:
    # A model from before the fields takes title and tags: invalid prices are no one's concern.
    model_path = echo_model(tmp_path / "text_only.onnx", listing=False)
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    table = with_fields(products_table).filter(
        pa.array([bool(t and t.strip()) for t in products_table.column("title").to_pylist()])
    )
    write_csv(table, source)
    code, out, _ = run(
        capsys, str(source), str(target), "--model", model_path, "--processes", "1", "--strict"
    )
    assert code == 0
    assert "invalid" not in out
    assert_scored(model_path, as_csv_text(table), read(target))


@pytest.mark.parametrize(
    ("titles", "prices", "message"),
    [
        (
            ["a", "b", "c", "d", "e"],
            ["1", "2", "3", " -3 ", "x"],
            "row 4 (counting from 1) has an invalid 'price': '-3'",
        ),
        (
            ["a", "b", "c", "", "e"],
            ["1", "2", "3", "", "x"],
            "row 4 (counting from 1) has a missing or blank title",
        ),
        (
            ["a", "b", "c", "", "e"],
            ["1", "2", "3", "-3", "x"],
            "row 4 (counting from 1) has a missing or blank title",
        ),
        (
            ["a", "b", "c", "d", "e"],
            ["1", "2", "3", "4", "1e400"],
            "row 5 (counting from 1) has an invalid 'price': '1e400'",
        ),
    ],
)
def test_strict_fails_on_the_first_refused_row_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    echo: str,
    titles: List[str],
    prices: List[str],
    message: str,
) -> None:
    source, target = tmp_path / "catalogue.parquet", tmp_path / "scored.parquet"
    pq.write_table(pa.table({"title": titles, "price": prices}), source)
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 2)  # row numbers count the batches before
    code, out, err = run(capsys, str(source), str(target), "--model", echo, "--processes", "1", "--strict")
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: --strict: {message}")
    assert err.count("\n") == 1
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_strict_names_each_fields_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str], echo: str) -> None:
    source, target = tmp_path / "catalogue.csv", tmp_path / "scored.csv"
    for name, value, rule in [
        ("seller_id", "s" * 65, "not at most 64 characters"),
        ("weight", "1,5", "not a number from 0 to 1,000,000"),
        ("express_delivery", "yes", "not true, false, 0 or 1"),
    ]:
        write_csv(pa.table({"title": ["Caneca"], name: [value]}), source)
        code, _, err = run(capsys, str(source), str(target), "--model", echo, "--processes", "1", "--strict")
        assert code == 1
        assert err == f"error: --strict: row 1 (counting from 1) has an invalid {name!r}: {value!r}, {rule}\n"
