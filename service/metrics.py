"""Prometheus metrics of the service, exact whichever worker answers the scrape.

With WORKERS > 1 a scrape of /metrics reaches whichever worker the kernel hands the
connection to. So workers run prometheus-client's multiprocess mode: every counter and
histogram lives in a file of its worker's, in the directory PROMETHEUS_MULTIPROC_DIR that
the supervisor creates (service/supervisor.py), and the worker that answers a scrape
sums them all. Gauges are written to those files at most GAUGE_REFRESH_SECONDS late
(every write costs, and they change several times a request), and each has a mode
saying how the workers' values combine. With WORKERS=1 the worker's own registry is
exact, in memory.

Observations are tallied in plain Python first and written to prometheus-client's values
by `flush`: a write to a multiprocess file takes a lock, checks the process id and packs
a record, several microseconds each and about ten per request. A scrape (`render`) and
every collect of the registry flush first, so this worker's own figures are always
exact; the app flushes as soon as the worker has no categorize request pending, and
while it stays busy at most FLUSH_SECONDS after an observation, so the other workers'
scrapes lag that much at most. All of it runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import Counter as Tally
from typing import Callable, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds; most requests take well under a millisecond of service time, the tail
# is batches of thousands of products.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PRODUCT_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000)
# Seconds a request waited for the model; the refusal limit (MAX_QUEUE_SECONDS) is a few seconds.
QUEUE_WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why a request was refused with 503 (service/scheduler.py): fixed, so the series are too.
REFUSAL_REASONS = ("pending_bytes", "queue_time", "queue_expired", "shutting_down")
# The top probability of each prediction, in buckets bounded by the thresholds of the
# model's confidence table (categorizer/confidence.py), so that a dashboard reads the
# share of traffic over each threshold as the table gives it on validation. No more:
# each bucket filled is one more write per category at each flush.
TOP_PROBABILITY_BUCKETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
# Requests of up to this many products tally the top probabilities one by one; larger
# ones count them per category and bucket with numpy (grouped_tallies), which costs a
# fixed few microseconds but not a Python step per product.
OBSERVE_ONE_BY_ONE = 16
# Multiprocess mode: how much later than the truth the other workers' gauges may be.
GAUGE_REFRESH_SECONDS = 1.0
# Multiprocess mode: how long a busy worker may keep observations before writing them
# to its files (an idle one writes them at once).
FLUSH_SECONDS = 0.1
# How a gauge's values in the workers combine (prometheus-client's multiprocess modes).
GaugeMode = Literal["livesum", "livemax"]


class Metrics:
    content_type = CONTENT_TYPE

    def __init__(self, labels: Iterable[str], multiprocess: bool = False) -> None:
        """`multiprocess`: one of several workers (prometheus-client's multiprocess mode,
        PROMETHEUS_MULTIPROC_DIR set before prometheus_client was imported)."""
        labels = tuple(labels)
        self.registry = CollectorRegistry(auto_describe=True)
        # Registered first, so that every read of the registry sees the tallies written.
        self.registry.register(_FlushFirst(self))
        self.multiprocess = multiprocess
        # Observations not yet written (flush): an amount per counter child, and per
        # histogram child a count per bucket followed by the sum of the values.
        self._counts: Dict[Counter, float] = {}
        self._tallies: Dict[Histogram, List[float]] = {}
        self._flush_timer: Optional[asyncio.TimerHandle] = None
        own: Optional[CollectorRegistry] = self.registry
        if multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call] # all workers' files
            own = None  # this worker's metrics go to its files, read through the collector
        self._requests = Counter(
            "categorizer_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=own,
        )
        self._latency = Histogram(
            "categorizer_http_request_duration_seconds",
            "Time from handler start to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self._products = Histogram(
            "categorizer_products_per_request",
            "Products in each successful categorize request.",
            buckets=PRODUCT_BUCKETS,
            registry=own,
        )
        self._predictions = Counter(
            "categorizer_predictions",
            "Products categorized, by predicted category.",
            ["category"],
            registry=own,
        )
        self._top_probability = Histogram(
            "categorizer_top_probability",
            "Top probability of each prediction, by predicted category.",
            ["category"],
            buckets=TOP_PROBABILITY_BUCKETS,
            registry=own,
        )
        self._refused = Counter(
            "categorizer_refused_requests",
            "Categorize requests answered 503 by admission control, by reason.",
            ["reason"],
            registry=own,
        )
        self._refused_by = {reason: self._refused.labels(reason) for reason in REFUSAL_REASONS}
        self._abandoned = Counter(
            "categorizer_abandoned_requests",
            "Requests dropped before their model call because the client had left.",
            registry=own,
        )
        self._queue_wait = Histogram(
            "categorizer_queue_wait_seconds",
            "Time from a request's arrival in the model queue to its model call.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=own,
        )
        self._own = own
        # Children resolved once: labels() costs a lock and a dict lookup per call.
        self._per_category = {label: self._predictions.labels(label) for label in labels}
        # The top-probability histogram of each category, and each category's position.
        self._top: List[Histogram] = []
        self._top_index: Dict[str, int] = {}
        for label in labels:
            self._top_child(label)
        self._children: Dict[Tuple[str, int], Tuple[Counter, Histogram]] = {}
        # Multiprocess mode: the gauges to write to this worker's files before a scrape.
        self._gauges: List[Tuple[Gauge, Callable[[], float]]] = []

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            # route is a registered resource or "unmatched", status a valid HTTP code:
            # the label set stays small whatever clients send.
            children = (self._requests.labels(route, str(status)), self._latency.labels(route))
            self._children[(route, status)] = children
        self._inc(children[0])
        self._observe(children[1], seconds)

    def observe_predictions(self, categories: Sequence[str], probabilities: np.ndarray) -> None:
        """One request's predictions: a category per product, and the model's
        probabilities (a row per product) whose top value each histogram counts."""
        self._observe(self._products, len(categories))
        if len(categories) <= OBSERVE_ONE_BY_ONE:
            # Plain Python: a Counter and numpy's reductions cost more than they save on
            # a few rows.
            for category, row in zip(categories, probabilities.tolist()):
                self._inc(self._predicted(category))
                self._observe(self._top[self._top_child(category)], max(row))
            return
        counts = Tally(categories)
        for category, count in counts.items():
            self._inc(self._predicted(category), count)
            self._top_child(category)
        groups = np.fromiter(map(self._top_index.__getitem__, categories), np.intp, len(categories))
        for position, tally in grouped_tallies(
            self._top[0]._upper_bounds, len(self._top), groups, probabilities.max(axis=1)
        ):
            self._add(self._top[position], tally)

    def _predicted(self, category: str) -> Counter:
        child = self._per_category.get(category)
        if child is None:  # not in the model's metadata: still count it, visibly
            child = self._per_category[category] = self._predictions.labels(category)
        return child

    def _top_child(self, category: str) -> int:
        """The category's position in self._top, created on first sight (as for the
        counter, a category missing from the model's metadata is still counted)."""
        position = self._top_index.get(category)
        if position is None:
            position = self._top_index[category] = len(self._top)
            self._top.append(self._top_probability.labels(category))
        return position

    def observe_refused(self, reason: str) -> None:
        self._inc(self._refused_by[reason])

    def observe_abandoned(self) -> None:
        self._inc(self._abandoned)

    def observe_queue_wait(self, seconds: float) -> None:
        self._observe(self._queue_wait, seconds)

    def _inc(self, counter: Counter, amount: float = 1.0) -> None:
        self._counts[counter] = self._counts.get(counter, 0.0) + amount

    def _observe(self, histogram: Histogram, value: float) -> None:
        tally = self._tallies.get(histogram)
        if tally is None:
            tally = self._tallies[histogram] = [0.0] * (len(histogram._upper_bounds) + 1)
        tally[-1] += value
        if value == value:  # NaN: in the sum and no bucket, as Histogram.observe counts it
            # The first bound at or above the value: a bucket takes the values up to and
            # including its bound.
            tally[bisect_left(histogram._upper_bounds, value)] += 1.0

    def _add(self, histogram: Histogram, tally: List[float]) -> None:
        mine = self._tallies.get(histogram)
        if mine is None:
            self._tallies[histogram] = tally
            return
        for i, value in enumerate(tally):
            mine[i] += value

    def flush(self) -> None:
        """Writes the tallied observations to prometheus-client's values (in multiprocess
        mode, this worker's files)."""
        # Each tally leaves once written: if a write fails (a full disk), the rest stay
        # for the next flush instead of being dropped with it.
        for counter in list(self._counts):
            counter.inc(self._counts[counter])
            del self._counts[counter]
        for histogram in list(self._tallies):
            write_tally(histogram, self._tallies[histogram])
            del self._tallies[histogram]

    def publish(self, idle: bool) -> None:
        """After a request: multiprocess mode writes the tallies now if the worker has
        no categorize request pending (`idle`), else within FLUSH_SECONDS. A worker alone
        needs neither: its reads flush."""
        if not self.multiprocess or not (self._counts or self._tallies):
            return
        if idle:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_timer = None
        self.flush()

    def close(self) -> None:
        """At shutdown: the last tallies written, no timer left behind."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.flush()

    def gauge(
        self, name: str, documentation: str, read: Callable[[], float], mode: GaugeMode = "livesum"
    ) -> None:
        """A gauge read at scrape time: nothing to update on the request path. `mode`
        says how the workers' values combine in multiprocess mode: `livesum` (the
        service's total) or `livemax` (the busiest worker's); a worker that has died
        no longer counts (the supervisor removes its file)."""
        gauge = Gauge(name, documentation, registry=self._own, multiprocess_mode=mode)
        if self.multiprocess:
            # set_function would only be seen by this worker's own scrapes.
            gauge.set(read())
            self._gauges.append((gauge, read))
        else:
            gauge.set_function(read)

    def refresh_gauges(self) -> None:
        """Multiprocess mode: writes this worker's gauges to its file, for the scrapes
        other workers answer (the app calls this every GAUGE_REFRESH_SECONDS)."""
        for gauge, read in self._gauges:
            gauge.set(read())

    def render(self) -> bytes:
        self.flush()  # _FlushFirst does it too, but a restricted read would skip it
        self.refresh_gauges()  # this worker's gauges are exact; the others' a moment old
        return generate_latest(self.registry)


def grouped_tallies(
    bounds: Sequence[float], groups_count: int, groups: np.ndarray, values: np.ndarray
) -> Iterator[Tuple[int, List[float]]]:
    """The tallies (a count per bucket of `bounds`, then the sum) of the values of each
    group that has any, as Metrics._observe would make them one value at a time: one
    numpy pass over the values instead of a Python step each."""
    width = len(bounds)
    bucket = np.searchsorted(bounds, values, side="left")
    counted = bucket < width  # NaN sorts past every bound: in the sum, no bucket
    cells = groups[counted] * width + bucket[counted]
    counts = np.bincount(cells, minlength=groups_count * width).reshape(-1, width)
    sums = np.bincount(groups, weights=values.astype(np.float64), minlength=groups_count).tolist()
    for position, (per_bucket, total) in enumerate(zip(counts.tolist(), sums)):
        if any(per_bucket) or total != 0.0:
            yield position, [float(count) for count in per_bucket] + [total]


def write_tally(histogram: Histogram, tally: List[float]) -> None:
    """Adds a tally to a histogram's values. prometheus-client has no call for this: it
    adds to each bucket's and the sum's value (`_buckets`, `_sum`, and the bounds
    `_upper_bounds`: the layout of every release since 0.4, which tests/test_metrics.py
    checks against observe)."""
    for value, count in zip(histogram._buckets, tally):
        if count:
            value.inc(count)
    histogram._sum.inc(tally[-1])


class _FlushFirst:
    """A collector with no metrics of its own that flushes the tallies when the registry
    is read, before the collectors that read the values."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> List[Metric]:
        self._metrics.flush()
        return []
