"""The graph's cost with the listing fields fed, against a model from before them (issue 13).

`python -m bench.fields --before OLD.onnx [--after artifacts/model.onnx] [--calls-scale 1]`
runs both files in this process, one single-threaded session each, on the public
test file's products (titles, no tags), in batches of 1, 100 and 1,000. Three variants:
the model before the fields fed its two inputs, and the model after them fed its
fields unknown and then every field the test file has. Their calls are interleaved one
by one in a shuffled order, so that the drift of a shared machine's speed (2-3× within
minutes here) falls on all three alike; timing each variant for a block of calls in
turn gave ratios that moved by 10% between runs. The table gives the median µs per
product of each variant and the throughput relative to the model before the fields
(the ratio of the medians). `git show <commit>:artifacts/model.onnx > OLD.onnx` gives
an old file.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import time
from typing import Dict, List, Sequence

import numpy as np
import onnxruntime as ort

from bench.payloads import ROOT, titles_source
from bench.stages import session, unknown_fields
from runtime.categorizer import INPUT_SELLER, LISTING_FIELDS

# Calls per variant and batch size: about 15 s of calls at each size on the development machine.
CALLS = {1: 4000, 100: 1000, 1000: 150}
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


def calls_for(batch: int, scale: float) -> int:
    return max(3, round(CALLS.get(batch, 100_000 // max(batch, 1)) * scale))


def measure(
    before: str, after: str, batch: int, calls: int, rows: Sequence[Dict[str, str]]
) -> Dict[str, List[float]]:
    """Per variant, µs per product of each of `calls` calls, the variants' calls interleaved."""
    chosen = [rows[i % len(rows)] for i in range(batch)]
    old, new = session(before), session(after)
    variants = {
        BEFORE: (old, feeds(old, chosen, False)),
        UNKNOWN: (new, feeds(new, chosen, False)),
        FIELDS: (new, feeds(new, chosen, True)),
    }
    for model, inputs in variants.values():  # warm-up
        model.run(None, inputs)
    out: Dict[str, List[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for _ in range(calls):
        shuffle(order)
        for name in order:
            model, inputs = variants[name]
            start = time.perf_counter()
            model.run(None, inputs)
            out[name].append((time.perf_counter() - start) * 1e6 / batch)
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
        ratios = [medians[0] / m for m in medians[1:]]
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
    parser.add_argument(
        "--calls-scale", type=float, default=1.0, help="multiplies the calls per batch size (CALLS)"
    )
    args = parser.parse_args(list(argv) or None)
    rows = products()
    calls = {batch: calls_for(batch, args.calls_scale) for batch in args.batches}
    results = {batch: measure(args.before, args.after, batch, calls[batch], rows) for batch in args.batches}
    print(
        f"onnxruntime {ort.__version__}; before {args.before}, after {args.after}; "
        f"interleaved calls per variant {calls}, medians"
    )
    print(table(results))


if __name__ == "__main__":
    main()
