"""Issue 15's measurements of the batch scorer (score.py), side by side in one run:

1. the in-process ceiling: as many processes as the local engine starts, each with one
   single-threaded session, scoring batches of 1,024 rows of the same file (title and
   tags) with Categorizer.predict_with_probabilities and nothing else; once in file order
   and once sorted by length within each batch of the engine (what the engine does);
2. the local engine: `python score.py rows.csv out.csv`, from start to exit (reading and
   writing included), and the peak RSS of its process tree;
3. the spark engine: `python score.py rows.parquet out.parquet --engine spark` on
   Spark's local mode, JVM start-up included, and the peak RSS of its tree (JVM included);
4. the local engine's peak RSS at other sizes (--memory-rows), to show it does not grow
   with the file.

The input is rows of the training CSV (DATASET_PATH, else ../shared/data/elo7_train.csv),
its category dropped, repeated; generated once into bench/results/batch/ and reused.

    python -m bench.batch                      # 500,000 rows, both engines, ~3 min here
    python -m bench.batch --rows 50000 --memory-rows 5000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch import io, scoring
from batch.local import cpu_count
from bench.payloads import ROOT
from bench.procs import PeakRss

DATA = ROOT / "bench" / "results" / "batch"
TRAINING = ROOT.parent / "shared" / "data" / "elo7_train.csv"
MODEL = str(ROOT / "artifacts" / "model.onnx")
# Rows each ceiling process cycles through (16 batches): enough variety of lengths.
CEILING_ROWS = 16 * scoring.SUB_BATCH_ROWS
# Rows the engine sorts by length at once: about one record batch of the CSV reader.
ENGINE_BATCH_ROWS = 6000


def synthesise(rows: int) -> Dict[str, Path]:
    """rows.csv and rows.parquet of `rows` training rows (category dropped), made once."""
    DATA.mkdir(parents=True, exist_ok=True)
    paths = {"csv": DATA / f"{rows}.csv", "parquet": DATA / f"{rows}.parquet"}
    if all(p.exists() for p in paths.values()):
        return paths
    source = Path(os.environ.get("DATASET_PATH") or TRAINING)
    text = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(column_types=_all_text(source)))
    table = text.drop_columns(["category"])
    repeated = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows)
    pacsv.write_csv(repeated, paths["csv"])
    # Row groups as the local engine writes them: Spark splits a file by row group.
    pq.write_table(repeated, paths["parquet"], row_group_size=io.ROW_GROUP_ROWS)
    return paths


def _all_text(path: Path) -> Dict[str, pa.DataType]:
    return {name: pa.string() for name in io.Input(str(path)).schema.names}  # as read by the engine


def _ceiling_process(csv: str, sort: bool, seconds: float, start_at: float) -> float:
    """rows/s of one process: the model alone on batches of 1,024 rows of `csv`."""
    model = scoring.model_for(MODEL)
    read: List[pa.RecordBatch] = []
    for batch in io.Input(csv).batches():
        read.append(batch)
        if sum(b.num_rows for b in read) >= CEILING_ROWS:
            break
    rows = pa.Table.from_batches(read).slice(0, CEILING_ROWS)
    titles = [t or "" for t in rows.column("title").to_pylist()]
    tags = [t if t and not t.isspace() else "" for t in rows.column("concatenated_tags").to_pylist()]
    order = list(range(len(titles)))
    if sort:  # as the engine: sorted by length within each of its batches
        for start in range(0, len(order), ENGINE_BATCH_ROWS):
            order[start : start + ENGINE_BATCH_ROWS] = sorted(
                order[start : start + ENGINE_BATCH_ROWS], key=lambda i: len(titles[i]) + len(tags[i])
            )
    size = scoring.SUB_BATCH_ROWS
    batches = [
        {
            "title": [titles[i] for i in order[s : s + size]],
            "concatenated_tags": [tags[i] for i in order[s : s + size]],
        }
        for s in range(0, len(order), size)
    ]
    model.predict_with_probabilities(batches[0])
    time.sleep(max(0.0, start_at - time.time()))
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict_with_probabilities(batches[done % len(batches)])
        done += 1
    return done * size / (time.perf_counter() - t0)


def ceiling(csv: Path, processes: int, sort: bool, seconds: float) -> float:
    """rows/s summed over `processes` processes timed over the same seconds."""
    start_at = time.time() + 5.0  # time to import and load the model first
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.starmap(_ceiling_process, [(str(csv), sort, seconds, start_at)] * processes)
    return sum(rates)


def score(source: Path, engine: str, rows: int) -> Dict[str, Any]:
    """score.py from start to exit: rows/s and the peak RSS of its process tree."""
    target = DATA / f"out-{engine}{source.suffix}"
    _remove(target)
    argv = [sys.executable, "score.py", str(source), str(target), "--model", MODEL, "--engine", engine]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(proc.pid, interval=0.1) as peak:
        out, err = proc.communicate()
    seconds = time.perf_counter() - started
    _remove(target)
    if proc.returncode != 0:
        raise RuntimeError(f"score.py failed ({proc.returncode}): {err.strip()[-2000:]}")
    return {
        "engine": engine,
        "input": source.name,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(peak.peak / 2**20, 1),
        "summary": out.strip(),
    }


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def machine() -> Dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }


def report(results: Dict[str, Any]) -> List[str]:
    lines = [f"{results['rows']:,} rows; {results['machine']['cpus']} CPUs, {results['machine']['cpu']}"]
    for k, round_ in enumerate(results["rounds"], 1):
        file_order, by_length = round_["ceiling_file_order"], round_["ceiling_sorted"]
        lines.append(f"round {k}: ceiling {file_order:,.0f} (file order), {by_length:,.0f} (sorted) rows/s")
        lines += [_run_line(run) for run in round_["runs"]]
        lines += [f"  {name:<32} {value:.2f}" for name, value in round_["ratios"].items()]
    lines += [_run_line(run) for run in results["memory"]]
    return lines


def _run_line(run: Dict[str, Any]) -> str:
    return (
        f"  {run['engine']:<6}{run['input']:<16} {run['rows_per_s']:>10,.0f} rows/s "
        f"{run['seconds']:>7.1f} s  peak RSS {run['peak_rss_mb']:,.0f} MB"
    )


def one_round(paths: Dict[str, Path], rows: int, engines: List[str], seconds: float) -> Dict[str, Any]:
    """The ceiling and the engines one after the other, so that the ratios compare
    figures taken minutes apart at most (others' load on a shared machine varies)."""
    processes = cpu_count()
    round_: Dict[str, Any] = {
        "ceiling_file_order": ceiling(paths["csv"], processes, False, seconds),
        "ceiling_sorted": ceiling(paths["csv"], processes, True, seconds),
        "runs": [],
    }
    if "local" in engines:
        round_["runs"].append(score(paths["csv"], "local", rows))
    if "spark" in engines:
        round_["runs"].append(score(paths["parquet"], "spark", rows))
    round_["ratios"] = _ratios(round_)
    return round_


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--engines", default="local,spark")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="ceiling: timed seconds per ordering")
    parser.add_argument(
        "--memory-rows", default="", help="comma-separated sizes for the local engine's peak RSS"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch.json")
    args = parser.parse_args(list(argv) or None)
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": args.rows,
        "machine": machine(),
    }
    paths = synthesise(args.rows)
    engines = args.engines.split(",")
    results["rounds"] = [one_round(paths, args.rows, engines, args.seconds) for _ in range(args.rounds)]
    sizes = [int(n) for n in args.memory_rows.split(",") if n]
    results["memory"] = [score(synthesise(rows)["csv"], "local", rows) for rows in sizes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(report(results)))
    return 0


def _ratios(round_: Dict[str, Any]) -> Dict[str, float]:
    by_engine = {run["engine"]: run["rows_per_s"] for run in round_["runs"]}
    ratios = {}
    if "local" in by_engine:
        ratios["local / ceiling (file order)"] = round(by_engine["local"] / round_["ceiling_file_order"], 3)
        ratios["local / ceiling (sorted)"] = round(by_engine["local"] / round_["ceiling_sorted"], 3)
    if "local" in by_engine and "spark" in by_engine:
        ratios["spark / local"] = round(by_engine["spark"] / by_engine["local"], 3)
    return ratios


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
