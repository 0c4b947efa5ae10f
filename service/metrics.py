"""Prometheus metrics of one worker process.

Each worker has its own registry: with WORKERS > 1 a scrape of /metrics is answered
by whichever worker the kernel hands the connection to, so it sees that worker only.
Sum over scrapes with care, or scrape with WORKERS=1 per container.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Callable, Dict, Iterable, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds; most requests take well under a millisecond of service time, the tail
# is batches of thousands of products.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PRODUCT_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000)
# Seconds a request waited for the model; the refusal limit (MAX_QUEUE_SECONDS) is a few seconds.
QUEUE_WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why a request was refused with 503 (service/scheduler.py): fixed, so the series are too.
REFUSAL_REASONS = ("pending_bytes", "queue_time", "queue_expired", "shutting_down")


class Metrics:
    content_type = CONTENT_TYPE

    def __init__(self, labels: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "categorizer_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "categorizer_http_request_duration_seconds",
            "Time from handler start to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._products = Histogram(
            "categorizer_products_per_request",
            "Products in each successful categorize request.",
            buckets=PRODUCT_BUCKETS,
            registry=self.registry,
        )
        self._predictions = Counter(
            "categorizer_predictions",
            "Products categorized, by predicted category.",
            ["category"],
            registry=self.registry,
        )
        self._refused = Counter(
            "categorizer_refused_requests",
            "Categorize requests answered 503 by admission control, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._refused_by = {reason: self._refused.labels(reason) for reason in REFUSAL_REASONS}
        self._abandoned = Counter(
            "categorizer_abandoned_requests",
            "Requests dropped before their model call because the client had left.",
            registry=self.registry,
        )
        self._queue_wait = Histogram(
            "categorizer_queue_wait_seconds",
            "Time from a request's arrival in the model queue to its model call.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        # Children resolved once: labels() costs a lock and a dict lookup per call.
        self._per_category = {label: self._predictions.labels(label) for label in labels}
        self._children: Dict[Tuple[str, int], Tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            # route is a registered resource or "unmatched", status a valid HTTP code:
            # the label set stays small whatever clients send.
            children = (self._requests.labels(route, str(status)), self._latency.labels(route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_predictions(self, categories: Iterable[str]) -> None:
        counts = Tally(categories)
        self._products.observe(sum(counts.values()))
        for category, count in counts.items():
            child = self._per_category.get(category)
            if child is None:  # not in the model's metadata: still count it, visibly
                child = self._per_category[category] = self._predictions.labels(category)
            child.inc(count)

    def observe_refused(self, reason: str) -> None:
        self._refused_by[reason].inc()

    def observe_abandoned(self) -> None:
        self._abandoned.inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time: nothing to update on the request path."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
