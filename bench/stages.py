"""Where a title's microseconds go: the serving graph's cost per stage (features.STAGES).

`python -m bench.stages [--model artifacts/model.onnx] [--batches 1 100 1000]` runs the
model alone in this process (one single-threaded session, as a worker has). Each batch
size is timed on a plain session; a second session with onnxruntime's profiler on sums
each node's kernel time under the stage its name starts with (onnx_graph names nodes
``<stage>/<op>_<n>``). The profiler's own cost inflates small kernels, so the stages
are read at the largest batch, where they are most of the time; at one title per call
the executor's time per node dominates, which the nodes column counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort

from bench.payloads import ROOT, load_titles

BETWEEN_NODES = "between nodes"
# Calls per batch size: enough for stable medians, few enough for a quick run.
CALLS = {1: 400, 100: 60, 1000: 12}
# Calls in each session's turn (see in_turns).
BURST = 5


def session(model_path: str, profile_dir: str = "") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "stages")
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def stage_of(node_name: str) -> str:
    return node_name.split("/", 1)[0] if "/" in node_name else "(unnamed)"


def kernel_times(profile_path: str) -> Dict[str, List[float]]:
    """Per stage, the kernel microseconds of each call of the model (profile order)."""
    with open(profile_path, encoding="utf-8") as source:
        events = json.load(source)
    calls: List[Dict[str, float]] = []
    for event in events:
        if event.get("name") == "model_run":
            calls.append(defaultdict(float))
        elif event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and calls:
            calls[-1][stage_of(event["name"][: -len("_kernel_time")])] += event["dur"]
    stages = sorted({stage for call in calls for stage in call})
    return {stage: [call.get(stage, 0.0) for call in calls] for stage in stages}


def profile(model_path: str, batch: int, titles: Sequence[str]) -> Dict[str, float]:
    """Median microseconds per title of each stage, between nodes, and the whole call.

    The whole call is timed on a session without the profiler, which adds far more
    time around each node than inside it; the stages are the profiled session's
    kernel times, and "between nodes" is what the kernels leave of the whole. The
    two sessions take turns (in_turns), so that both see the same machine: run one
    after the other, a shared machine's drift (2-3x within minutes here) made the
    kernels add up to half as much again as the whole call they are part of.
    """
    rows = [titles[i % len(titles)] for i in range(batch)]
    calls = CALLS.get(batch, 20)
    # The first tenth of the calls warms caches up and is left out of the medians.
    skip = max(1, calls // 10)
    plain = session(model_path)
    feeds = unknown_fields(plain, rows)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(model_path, tmp)
        walls = in_turns({"plain": (plain, feeds), "profiled": (profiled, feeds)}, calls, BURST)["plain"]
        per_stage = kernel_times(profiled.end_profiling())
    walls = walls[skip:]
    out = {stage: statistics.median(times[skip:]) / batch for stage, times in per_stage.items()}
    total = statistics.median(walls) / batch
    out[BETWEEN_NODES] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return out


def unknown_fields(model: ort.InferenceSession, titles: Sequence[str]) -> Dict[str, np.ndarray]:
    """The model's inputs for `titles` alone: every other input unknown ("" or NaN)."""
    feeds: Dict[str, np.ndarray] = {"title": np.array(titles, dtype=np.str_)}
    for given in model.get_inputs():
        if given.type == "tensor(float)":
            feeds[given.name] = np.full(len(titles), np.nan, np.float32)
        elif given.name != "title":
            feeds[given.name] = np.zeros(len(titles), dtype="<U1")
    return feeds


# A session and what it is fed.
Run = Tuple[ort.InferenceSession, Dict[str, np.ndarray]]


def in_turns(
    runs: Mapping[str, Run], calls: int, burst: int, shuffle: Callable[[List[str]], None] = lambda order: None
) -> Dict[str, List[float]]:
    """Per run, the µs of each of `calls` timed calls.

    The runs take turns, `burst` calls each, the first of a turn untimed (it runs on
    the caches the other runs filled), so that a shared machine's drift falls on all
    of them alike; `shuffle` reorders the turns before each round.
    """
    out: Dict[str, List[float]] = {name: [] for name in runs}
    order = list(runs)
    while min(len(times) for times in out.values()) < calls:
        shuffle(order)
        for name in order:
            model, feeds = runs[name]
            model.run(None, feeds)
            for _ in range(min(burst - 1, calls - len(out[name]))):
                out[name].append(_timed(model, feeds))
    return out


def _timed(run: ort.InferenceSession, feeds: Dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    run.run(None, feeds)
    return (time.perf_counter() - start) * 1e6


def node_count(model_path: str) -> Dict[str, int]:
    counts: Dict[str, int] = defaultdict(int)
    for node in onnx.load(model_path, load_external_data=False).graph.node:
        counts[stage_of(node.name)] += 1
    return dict(counts)


def table(results: Dict[int, Dict[str, float]], nodes: Dict[str, int]) -> str:
    """Per stage: nodes and µs per title at the largest batch; then each batch's whole call."""
    largest = max(results)
    at_largest = results[largest]
    stages = sorted(
        (s for s in at_largest if s not in (BETWEEN_NODES, "total")), key=lambda s: -at_largest[s]
    )
    # Shares of the kernels plus what lies between them: the profiler inflates the
    # kernels a little, so they can exceed the whole call timed without it.
    accounted = sum(at_largest[s] for s in [*stages, BETWEEN_NODES])
    lines = [f"| stage | nodes | µs/title at {largest:,} titles (share) |", "|---|---:|---:|"]
    for stage in [*stages, BETWEEN_NODES]:
        lines.append(f"| {stage} | {nodes.get(stage, '')} | {_cell(at_largest[stage], accounted)} |")
    lines.append(f"| whole call | {sum(nodes.values())} | {at_largest['total']:,.1f} |")
    calls = ", ".join(f"{results[b]['total']:,.1f} µs/title at {b:,}" for b in sorted(results))
    return "\n".join(lines) + f"\n\nWhole calls: {calls}."


def _cell(value: float, total: float) -> str:
    return f"{value:,.1f} ({100 * value / total:.0f}%)" if total else "0"


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=os.environ.get("MODEL_PATH") or str(ROOT / "artifacts" / "model.onnx")
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    args = parser.parse_args(list(argv) or None)
    titles = load_titles()
    results = {batch: profile(args.model, batch, titles) for batch in args.batches}
    print(f"onnxruntime {ort.__version__}, {args.model}, titles without tags, median µs per title")
    print(table(results, node_count(args.model)))


if __name__ == "__main__":
    main()
