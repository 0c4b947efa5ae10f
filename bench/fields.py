"""The graph's cost with the listing fields fed, against a model from before them (issue 13).

`python -m bench.fields --before OLD.onnx [--after artifacts/model.onnx] [--calls-scale 1]`
runs both files in this process, one single-threaded session each, on the public
test file's products (titles, no tags), in batches of 1, 100 and 1,000. Four variants,
each with a session of its own: the model before the fields fed its two inputs, the
same again (a control: its ratio to the first is the method's noise floor), and the
model after them fed its fields unknown, then every field the test file has.

The variants take turns in a shuffled order, a short burst of calls each, the first
call of a burst untimed (it runs on caches the other sessions' weights have filled),
so that the drift of a shared machine's speed (2-3× within minutes here) falls on all
of them alike; timing each variant for a long block of calls in turn gave ratios that
moved by 10% between runs. The table gives the median µs per product of each variant
and the throughput relative to the model before the fields (the ratio of the medians).
`git show <commit>:artifacts/model.onnx > OLD.onnx` gives an old file.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
from typing import Dict, List, Sequence

import numpy as np
import onnxruntime as ort

from bench.payloads import ROOT, titles_source
from bench.stages import Run, in_turns, session, unknown_fields
from runtime.categorizer import INPUT_SELLER, LISTING_FIELDS

# Timed calls per variant and batch size: about 3, 6 and 10 s for the four variants
# together on the development machine.
CALLS = {1: 4000, 100: 1000, 1000: 150}
# Calls in a variant's turn (bench.stages.in_turns); the first is not timed.
BURST = 6
BEFORE, CONTROL = "before the fields", "before, second session"
UNKNOWN, FIELDS = "fields unknown", "every field fed"
VARIANTS = (BEFORE, CONTROL, UNKNOWN, FIELDS)


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
    """Per variant, µs per product of each of `calls` timed calls, the variants taking turns."""
    chosen = [rows[i % len(rows)] for i in range(batch)]
    files = {
        BEFORE: (before, False),
        CONTROL: (before, False),
        UNKNOWN: (after, False),
        FIELDS: (after, True),
    }
    variants: Dict[str, Run] = {}
    for name, (path, with_fields) in files.items():
        model = session(path)
        variants[name] = (model, feeds(model, chosen, with_fields))
    walls = in_turns(variants, calls, BURST, random.Random(0).shuffle)
    return {name: [wall / batch for wall in times] for name, times in walls.items()}


def table(results: Dict[int, Dict[str, List[float]]]) -> str:
    lines = [
        "| products per call | "
        + " | ".join(f"{v}: µs/product" for v in (BEFORE, UNKNOWN, FIELDS))
        + f" | throughput vs before: {CONTROL} (noise) | {UNKNOWN} | {FIELDS} |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, times in sorted(results.items()):
        medians = [statistics.median(times[v]) for v in (BEFORE, UNKNOWN, FIELDS)]
        ratios = [medians[0] / statistics.median(times[v]) for v in (CONTROL, UNKNOWN, FIELDS)]
        lines.append(
            f"| {batch:,} | "
            + " | ".join(f"{m:,.1f}" for m in medians)
            + " | "
            + " | ".join(f"{r:.2f}×" for r in ratios)
            + " |"
        )
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch holds at least one product, not {value}")
    return value


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a model file from before the listing fields")
    parser.add_argument(
        "--after", default=os.environ.get("MODEL_PATH") or str(ROOT / "artifacts" / "model.onnx")
    )
    parser.add_argument("--batches", type=_positive, nargs="+", default=[1, 100, 1000])
    parser.add_argument(
        "--calls-scale", type=float, default=1.0, help="multiplies the calls per batch size (CALLS)"
    )
    args = parser.parse_args(list(argv) or None)
    rows = products()
    calls = {batch: calls_for(batch, args.calls_scale) for batch in args.batches}
    results = {batch: measure(args.before, args.after, batch, calls[batch], rows) for batch in args.batches}
    print(
        f"onnxruntime {ort.__version__}; before {args.before}, after {args.after}; "
        f"timed calls per variant {calls}, in turns of {BURST - 1}, medians"
    )
    print(table(results))


if __name__ == "__main__":
    main()
