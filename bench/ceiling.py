"""The in-process onnxruntime ceiling: titles/s of Categorizer.predict with no HTTP at all.

Measured in `processes` processes at once (the service's worker count), each with its own
single-threaded session, so the figure is comparable with the service on the same cores.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Dict, List, Sequence

from bench.payloads import load_titles

# Time the spawned processes get to import and load the model before timing starts.
LOAD_SECONDS = 2.0
# Gap between batch sizes, for the next batch's warm-up.
SLOT_MARGIN = 0.3


def _measure(model_path: str, batch_sizes: Sequence[int], seconds: float, start_at: float) -> List[float]:
    """titles/s at each batch size; every process times batch k in the same time slot."""
    from runtime.categorizer import Categorizer

    model = Categorizer.load(model_path)
    titles = load_titles()
    rates = []
    for k, batch in enumerate(batch_sizes):
        batches = [[titles[(b * batch + i) % len(titles)] for i in range(batch)] for b in range(8)]
        tags = [""] * batch
        for rows in batches[:2]:
            model.predict(rows, tags)
        slot = start_at + k * (seconds + SLOT_MARGIN)
        while time.time() < slot:
            time.sleep(0.001)
        done = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model.predict(batches[done % len(batches)], tags)
            done += 1
        rates.append(done * batch / (time.perf_counter() - t0))
    return rates


def measure(
    model_path: str, batch_sizes: Sequence[int], processes: int, seconds: float
) -> List[Dict[str, float]]:
    """titles/s per batch size, summed over `processes` concurrent processes, and per process."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + LOAD_SECONDS
    with context.Pool(processes) as pool:
        per_process = pool.starmap(_measure, [(model_path, list(batch_sizes), seconds, start_at)] * processes)
    results = []
    for k, batch in enumerate(batch_sizes):
        total = sum(rates[k] for rates in per_process)
        results.append(
            {
                "batch": batch,
                "processes": processes,
                "titles_per_s": round(total, 1),
                "titles_per_s_per_process": round(total / processes, 1),
                "us_per_title_per_process": round(1e6 * processes / total, 1),
            }
        )
    return results
