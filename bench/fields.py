"""The graph's cost with the listing fields fed, against a model from before them (issue 13).

`python -m bench.fields --before OLD.onnx [--after artifacts/model.onnx] [--rounds 7]`
runs both files in this process, one single-threaded session each, on the public
test file's products (titles, no tags), in batches of 1, 100 and 1,000. Each round
times, one after another, the model before the fields fed its two inputs, and the
model after them fed its fields unknown and then every field the test file has. The
table gives median µs per product and the throughput of each variant relative to the
model before the fields, round by round (side by side, as the noise of a shared
machine requires). `git show <commit>:artifacts/model.onnx > OLD.onnx` gives an old file.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from typing import Dict, List, Sequence

import numpy as np
import onnxruntime as ort

from bench.payloads import ROOT, titles_source
from bench.stages import session, unknown_fields
from runtime.categorizer import INPUT_SELLER, LISTING_FIELDS

# Calls per batch size and round.
CALLS = {1: 300, 100: 40, 1000: 8}
BEFORE, UNKNOWN, FIELDS = "before the fields", "fields unknown", "every field fed"


def products() -> List[Dict[str, str]]:
    source = titles_source()
    if source == "synthetic":
        raise SystemExit("bench.fields needs the public test file (TEST_PRODUCTS_PATH) for real fields")
    with open(source, encoding="utf-8", newline="") as f:
        return [row for row in csv.DictReader(f) if row["title"].strip()]


def feeds(
    model: ort.InferenceSession, rows: Sequence[Dict[str, str]], with_fields: bool
) -> Dict[str, np.ndarray]:
    """The model's inputs for `rows` (no tags); fields from the rows or unknown."""
    out = unknown_fields(model, [r["title"] for r in rows])
    if with_fields:
        for name in set(LISTING_FIELDS) & set(out):
            if name == INPUT_SELLER:
                out[name] = np.array([r[name] for r in rows], dtype=np.str_)
            else:
                out[name] = np.array([float(r[name]) if r[name] else np.nan for r in rows], dtype=np.float32)
    return out


def timed(model: ort.InferenceSession, inputs: Dict[str, np.ndarray], calls: int) -> float:
    """Median µs per call over `calls` calls, after one warm-up call."""
    model.run(None, inputs)
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        model.run(None, inputs)
        walls.append((time.perf_counter() - start) * 1e6)
    return statistics.median(walls)


def measure(
    before: str, after: str, batch: int, rounds: int, rows: Sequence[Dict[str, str]]
) -> Dict[str, List[float]]:
    chosen = [rows[i % len(rows)] for i in range(batch)]
    old, new = session(before), session(after)
    variants = {
        BEFORE: (old, feeds(old, chosen, False)),
        UNKNOWN: (new, feeds(new, chosen, False)),
        FIELDS: (new, feeds(new, chosen, True)),
    }
    out: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (model, inputs) in variants.items():
            out[name].append(timed(model, inputs, CALLS.get(batch, 20)) / batch)
    return out


def table(results: Dict[int, Dict[str, List[float]]]) -> str:
    lines = [
        "| products per call | "
        + " | ".join(f"{v}: µs/product" for v in (BEFORE, UNKNOWN, FIELDS))
        + f" | throughput vs before: {UNKNOWN} | {FIELDS} |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, times in sorted(results.items()):
        medians = [statistics.median(times[v]) for v in (BEFORE, UNKNOWN, FIELDS)]
        ratios = [
            statistics.median(b / a for b, a in zip(times[BEFORE], times[v])) for v in (UNKNOWN, FIELDS)
        ]
        lines.append(
            f"| {batch:,} | "
            + " | ".join(f"{m:,.1f}" for m in medians)
            + " | "
            + " | ".join(f"{r:.2f}×" for r in ratios)
            + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a model file from before the listing fields")
    parser.add_argument(
        "--after", default=os.environ.get("MODEL_PATH") or str(ROOT / "artifacts" / "model.onnx")
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(list(argv) or None)
    rows = products()
    results = {batch: measure(args.before, args.after, batch, args.rounds, rows) for batch in args.batches}
    print(
        f"onnxruntime {ort.__version__}; before {args.before}, after {args.after}; "
        f"{args.rounds} rounds, medians"
    )
    print(table(results))


if __name__ == "__main__":
    main()
