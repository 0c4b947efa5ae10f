"""service/metrics.py in one process: the top-probability histogram, counted one by one
or per bucket, says the same as prometheus-client's own observe."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from categorizer.confidence import THRESHOLDS
from service import metrics as metrics_module
from service.metrics import TOP_PROBABILITY_BUCKETS, Metrics, observe_grouped

LABELS = ["Bebê", "Decoração", "Outros"]


def samples(registry: CollectorRegistry, name: str) -> Dict[Tuple[str, ...], float]:
    return {
        (sample.name, *sorted(sample.labels.values())): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_grouped_observations_match_observe_one_by_one() -> None:
    rng = np.random.default_rng(0)
    # Values on the bounds too: a bucket takes the values up to and including its bound.
    values = np.concatenate([rng.uniform(0.2, 1.0, 500), np.array(TOP_PROBABILITY_BUCKETS), [1.0, 0.1]])
    groups = rng.integers(0, 3, len(values))
    grouped, single = CollectorRegistry(), CollectorRegistry()
    histograms = []
    for registry in (grouped, single):
        histogram = Histogram("top", "t", ["g"], buckets=TOP_PROBABILITY_BUCKETS, registry=registry)
        histograms.append([histogram.labels(str(g)) for g in range(3)])
    observe_grouped(histograms[0], groups, values.astype(np.float32))
    for group, value in zip(groups.tolist(), values.astype(np.float32).tolist()):
        histograms[1][group].observe(value)
    want, got = samples(single, "top"), samples(grouped, "top")
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert sum(v for k, v in got.items() if k[0] == "top_count") == len(values)


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
    got = samples(metrics.registry, "categorizer_top_probability")
    want = samples(reference, "ref")
    assert len(got) == len(want)
    for (name, *labels), value in want.items():
        key = (name.replace("ref", "categorizer_top_probability"), *labels)
        assert got[key] == pytest.approx(value, rel=1e-9), key
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
