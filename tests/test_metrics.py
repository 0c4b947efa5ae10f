"""service/metrics.py in one process: observations tallied and written later, one by one
or per bucket, say the same as prometheus-client's own observe; a worker of several
writes them to its file at once when idle, within FLUSH_SECONDS when busy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from categorizer.confidence import THRESHOLDS
from service import metrics as metrics_module
from service.metrics import (
    FLUSH_SECONDS,
    LATENCY_BUCKETS,
    TOP_PROBABILITY_BUCKETS,
    Metrics,
    grouped_tallies,
    write_tally,
)

LABELS = ["Bebê", "Decoração", "Outros"]


def samples(registry: CollectorRegistry, name: str) -> Dict[Tuple[str, ...], float]:
    return {
        (sample.name, *sorted(sample.labels.values())): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def assert_same_samples(registry: CollectorRegistry, name: str, reference: CollectorRegistry) -> None:
    """The samples of `name` in registry are those of the metric "ref" in reference."""
    got, want = samples(registry, name), samples(reference, "ref")
    assert len(got) == len(want)
    for (sample_name, *labels), value in want.items():
        key = (sample_name.replace("ref", name), *labels)
        assert got[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key


def test_grouped_observations_match_observe_one_by_one() -> None:
    rng = np.random.default_rng(0)
    # Values on the bounds too: a bucket takes the values up to and including its bound.
    observed = np.concatenate([rng.uniform(0.2, 1.0, 500), np.array(TOP_PROBABILITY_BUCKETS), [1.0, 0.1]])
    observed = observed.astype(np.float32)
    groups = rng.integers(0, 3, len(observed))
    grouped, single = CollectorRegistry(), CollectorRegistry()
    histograms = []
    for registry, name in ((grouped, "top"), (single, "ref")):
        histogram = Histogram(name, "t", ["g"], buckets=TOP_PROBABILITY_BUCKETS, registry=registry)
        histograms.append([histogram.labels(str(g)) for g in range(3)])
    bounds = histograms[0][0]._upper_bounds
    for position, tally in grouped_tallies(bounds, 3, groups, observed):
        write_tally(histograms[0][position], tally)
    for group, value in zip(groups.tolist(), observed.tolist()):
        histograms[1][group].observe(value)
    assert_same_samples(grouped, "top", single)
    assert sum(v for k, v in samples(grouped, "top").items() if k[0] == "top_count") == len(observed)


@pytest.mark.parametrize(
    "count", [1, metrics_module.OBSERVE_ONE_BY_ONE, metrics_module.OBSERVE_ONE_BY_ONE + 1, 300]
)
def test_predictions_count_the_same_whatever_their_number(count: int) -> None:
    # Below OBSERVE_ONE_BY_ONE products are observed one by one, above it per bucket.
    rng = np.random.default_rng(count)
    probabilities = rng.dirichlet(np.ones(len(LABELS)) * 0.5, count).astype(np.float32)
    categories = [LABELS[i] for i in probabilities.argmax(axis=1)]
    metrics = Metrics(LABELS)
    metrics.observe_predictions(categories, probabilities)
    reference = CollectorRegistry()
    histogram = Histogram("ref", "r", ["category"], buckets=TOP_PROBABILITY_BUCKETS, registry=reference)
    for label in LABELS:
        histogram.labels(label)
    for category, row in zip(categories, probabilities.tolist()):
        histogram.labels(category).observe(max(row))
    assert_same_samples(metrics.registry, "categorizer_top_probability", reference)
    predictions: List[float] = [
        metrics.registry.get_sample_value("categorizer_predictions_total", {"category": label}) or 0.0
        for label in LABELS
    ]
    assert sum(predictions) == count


def test_the_histogram_has_a_bound_at_each_threshold_of_the_confidence_table() -> None:
    # So that a dashboard reads the coverage at each threshold of GET /v1/model's table.
    assert set(THRESHOLDS) <= set(TOP_PROBABILITY_BUCKETS)


def test_a_category_missing_from_the_labels_is_still_counted() -> None:
    metrics = Metrics(LABELS)
    metrics.observe_predictions(["Nova"] * 20, np.full((20, 3), 0.8, dtype=np.float32))
    count = metrics.registry.get_sample_value("categorizer_top_probability_count", {"category": "Nova"})
    assert count == 20


def test_tallied_latencies_read_as_observe_counts_them() -> None:
    # On the bounds, between them, past the last one, and zero.
    seconds = [*LATENCY_BUCKETS, 0.0, 0.0007, 0.3, 11.0, 60.0]
    metrics = Metrics(LABELS)
    reference = CollectorRegistry()
    histogram = Histogram("ref", "r", ["route"], buckets=LATENCY_BUCKETS, registry=reference)
    for value in seconds:
        metrics.observe_request("/v1/categorize", 200, value)
        histogram.labels("/v1/categorize").observe(value)
    assert_same_samples(metrics.registry, "categorizer_http_request_duration_seconds", reference)
    requests = {"route": "/v1/categorize", "status": "200"}
    assert metrics.registry.get_sample_value("categorizer_http_requests_total", requests) == len(seconds)


@pytest.fixture
def worker_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prometheus-client's multiprocess mode in this process, its files in tmp_path
    (the mode is chosen when prometheus_client is imported: its value class is swapped)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
    return tmp_path


def another_workers_count(files: Path) -> float:
    """What a scrape answered by another worker says: the files, not this registry."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(files))  # type: ignore[no-untyped-call]
    labels = {"route": "/v1/categorize", "status": "200"}
    return registry.get_sample_value("categorizer_http_requests_total", labels) or 0.0


async def test_a_busy_worker_writes_its_observations_on_a_timer(worker_files: Path) -> None:
    metrics = Metrics(LABELS, multiprocess=True)
    metrics.observe_request("/v1/categorize", 200, 0.001)
    metrics.publish(idle=False)  # another request in flight: written later, not now
    assert another_workers_count(worker_files) == 0
    start = time.monotonic()
    while another_workers_count(worker_files) == 0:
        assert time.monotonic() - start < 5.0, "the tallies were never written"
        await asyncio.sleep(FLUSH_SECONDS / 10)
    assert another_workers_count(worker_files) == 1
    metrics.close()


async def test_an_idle_worker_writes_its_observations_before_answering(worker_files: Path) -> None:
    metrics = Metrics(LABELS, multiprocess=True)
    for _ in range(3):
        metrics.observe_request("/v1/categorize", 200, 0.001)
        metrics.publish(idle=True)
        # No await: the write happened before the response could be sent.
    assert another_workers_count(worker_files) == 3
    metrics.observe_request("/v1/categorize", 200, 0.001)
    metrics.close()  # shutdown writes what is left
    assert another_workers_count(worker_files) == 4


@pytest.mark.parametrize("count", [1, metrics_module.OBSERVE_ONE_BY_ONE + 1])
def test_a_nan_probability_is_counted_as_observe_counts_it(count: int) -> None:
    # In the sum and in no bucket; one by one and per bucket alike.
    probabilities = np.full((count, len(LABELS)), np.nan, dtype=np.float32)
    probabilities[1:] = 0.6
    metrics = Metrics(LABELS)
    metrics.observe_predictions([LABELS[0]] * count, probabilities)
    reference = CollectorRegistry()
    histogram = Histogram("ref", "r", ["category"], buckets=TOP_PROBABILITY_BUCKETS, registry=reference)
    for label in LABELS:
        histogram.labels(label)
    for row in probabilities.tolist():
        histogram.labels(LABELS[0]).observe(max(row))
    assert_same_samples(metrics.registry, "categorizer_top_probability", reference)


def test_a_failed_write_keeps_the_tallies_not_yet_written(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(LABELS)
    for route in ("/a", "/b"):
        metrics.observe_request(route, 200, 0.001)
    write = values.MutexValue.inc
    failures = [OSError("No space left on device")]

    def first_write_fails(value: values.MutexValue, amount: float) -> None:
        if failures:
            raise failures.pop()
        write(value, amount)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(values.MutexValue, "inc", first_write_fails)
    with pytest.raises(OSError, match="No space"):
        metrics.flush()
    for route in ("/a", "/b"):  # the next read writes what the failed flush did not
        labels = {"route": route, "status": "200"}
        assert metrics.registry.get_sample_value("categorizer_http_requests_total", labels) == 1
        assert (
            metrics.registry.get_sample_value(
                "categorizer_http_request_duration_seconds_count", {"route": route}
            )
            == 1
        )
