"""Every decision about a worker's model work: admission, queue, batching, inline or
thread, sub-batches. Handlers speak HTTP and hand their products here.

**Admission**, before a body is read. A request is refused at once, from its
Content-Length, if its body would not fit beside the bytes the worker's pending requests
hold (`MAX_PENDING_BYTES`: a waiting request holds its body, then its decoded strings, so
this bounds the worker's memory whatever the number of clients; a chunked body is charged
as it arrives), or if the decoded work already queued would keep it waiting more than
`MAX_QUEUE_SECONDS` (estimated from characters, `CostModel`): served late is worse than
refused. A refused request gets 503 with `Retry-After`: the estimated seconds until the
pending work is done (the handler first reads and drops the rest of the body, so that an
uploading client sees the answer, not a reset).

**Queue.** One FIFO queue per worker. Small calls run on the event loop (a thread
hand-off costs more than they do), big ones on the model thread so that the loop keeps
answering health checks and refusals. The thread holds at most `HANDED_MAX` calls (the
running one and the next); the rest waits here, where it can still be taken back.
When a job is taken, it is dropped if its client has left (499) and refused if it
waited longer than `MAX_QUEUE_SECONDS` (503); on the thread, a job whose client left
meanwhile is skipped too. At shutdown the queue is refused at once.

**Batching.** Consecutive requests of fewer than `BATCH_MAX_PRODUCTS` products share one
call of at most that many. There is no wait timer: while a call runs, requests queue,
and the next call takes them, so batches grow with the load and a lone request pays
nothing. If a shared call fails, each request of it runs again alone, so each caller
gets its own result or its own exception.

**Sub-batches.** The graph pads every string of a call to the call's longest, so a big
request runs in sub-batches of `SUB_BATCH_ROWS` rows sorted by length.

**Columns.** A call's products go to the model as one column per input: titles, tags and
the listing fields (seller, price, ...) some product sent. Every column is merged, sorted
and cut by the same row numbers, so a field stays with its product; a request that sent
no field has none in its rows of a shared call, which the model reads as unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Protocol, Tuple, Union

import numpy as np

from runtime.categorizer import INPUT_SELLER, INPUT_TAGS, INPUT_TITLE, Column
from service.errors import ApiError
from service.metrics import Metrics

# Rows per model call for big requests: one call's padded memory grows with rows x
# longest string, and 256 rows already amortise the per-call cost.
SUB_BATCH_ROWS = 256
# Batches up to this many characters (titles + tags) run on the event loop: at most a
# few milliseconds of stall, and with one worker process per core the thread hand-off
# only adds switches (see docs/decisions.md).
INLINE_MAX_CHARS = 8192
# Each product is charged this many characters beyond its own, for the model's work per
# row (a title of one character costs about as much as one of 14): without it, thousands
# of one-letter titles would run on the event loop as a few milliseconds' work and take
# a hundred, and teach the cost model that every character is dear (docs/decisions.md).
ROW_CHARS = 16
# Freed memory goes back to the system once the worker has been quiet this long after
# answering this much body data (see service/memory.py).
TRIM_AFTER_BYTES = 8 * 1024 * 1024
# Calls handed to the model thread at once: the running one and the next, ready, so
# that the thread never idles while the busy event loop gets round to handing it more
# (docs/decisions.md). Any more would only hold work that, still in the scheduler's
# queue, could be dropped.
HANDED_MAX = 2
TRIM_DELAY_SECONDS = 1.0


class Model(Protocol):
    """What the scheduler needs of runtime.categorizer.Categorizer."""

    def predict_with_probabilities(self, columns: Mapping[str, Column]) -> Tuple[List[str], np.ndarray]: ...


class Prediction(NamedTuple):
    """One request's answer: a category per product, the model's probabilities (a row
    per product, a column per label), and the seconds of the model call that computed
    them (shared with the other requests of a batched call)."""

    categories: List[str]
    probabilities: np.ndarray
    seconds: float


class _Abandoned:
    """The outcome of a job whose client left while its call waited on the thread."""


_ABANDONED = _Abandoned()
# One request's prediction, the exception its products alone raised, or _ABANDONED.
Outcome = Union[Prediction, BaseException, _Abandoned]


class CostModel:
    """Model seconds a request will cost, from the characters it sends (titles + tags,
    and ROW_CHARS for each product: the scheduler's "chars").

    Characters are most of what the model reads (titles range from 10 to 1,000
    characters). The rate is learned from the calls themselves, so estimates follow the
    machine's speed; and from characters, not body bytes, so that a body padded with
    JSON white space cannot teach it that work is cheap.
    """

    # Seed, until calls are measured: ~0.3 us a character on the development machine.
    SECONDS_PER_CHAR = 0.3e-6
    SECONDS_PER_REQUEST = 50e-6  # JSON, HTTP and the call's fixed cost
    MIN_CHARS_TO_LEARN = 16 * 1024  # smaller calls measure their fixed cost, not characters
    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.seconds_per_char = self.SECONDS_PER_CHAR

    def estimate(self, chars: int) -> float:
        return self.SECONDS_PER_REQUEST + chars * self.seconds_per_char

    def observe(self, chars: int, seconds: float) -> None:
        if chars >= self.MIN_CHARS_TO_LEARN:
            self.seconds_per_char += self.SMOOTHING * (seconds / chars - self.seconds_per_char)


class Ticket:
    """One admitted request's share of the budgets, until it is answered: the body bytes
    received so far, and once decoded, the model seconds its characters will cost."""

    __slots__ = ("nbytes", "released", "seconds")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.seconds = 0.0
        self.released = False


class _Job(NamedTuple):
    ticket: Ticket
    titles: List[str]
    tags: List[str]
    fields: Mapping[str, Column]  # the listing fields some product sent, a column each
    chars: int
    gone: Callable[[], bool]  # whether the client has left
    future: asyncio.Future[Prediction]
    queued_at: float


class Scheduler:
    def __init__(
        self,
        model: Model,
        executor: Executor,
        metrics: Metrics,
        *,
        max_pending_bytes: int,
        max_queue_seconds: float,
        batch_max_products: int,
        inline_max_chars: int = INLINE_MAX_CHARS,
        trim: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model  # predict looked up per call: tests replace it
        self._executor = executor
        self._metrics = metrics
        self.max_pending_bytes = max_pending_bytes
        self.max_queue_seconds = max_queue_seconds
        self.batch_max_products = batch_max_products
        self._inline_max_chars = inline_max_chars
        self._trim = trim
        self._clock = clock
        self.cost = CostModel()
        self._queue: Deque[_Job] = deque()
        self._flush_due = False  # a flush is scheduled on the loop
        self._handed = 0  # calls handed to the model thread and not yet back
        self._closed = False
        self._keep_seconds = 0.0  # after close: how much queued work may still start
        self._since_trim = 0  # body bytes answered since memory was last given back
        self._trim_timer: Optional[asyncio.TimerHandle] = None
        self._last_release = 0.0
        # Gauges and counters, read by /metrics and the tests.
        self.pending_requests = 0
        self.pending_bytes = 0
        self.pending_seconds = 0.0  # model seconds of the decoded pending requests
        self._decoded_bytes = 0  # body bytes of those
        self.calls = 0
        self.requests = 0

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    # -- admission -------------------------------------------------------------

    def admit(self, declared: Optional[int]) -> Ticket:
        """A ticket for a request whose body will be `declared` bytes (None: chunked), or
        ApiError(503) with Retry-After when it would not fit: its bytes beside the bytes
        pending requests hold, or behind more than MAX_QUEUE_SECONDS of decoded work.

        The declared bytes are charged now, so that the requests admitted together cannot
        exceed the budget between them (a chunked body is charged as it arrives, `grow`).
        Model time is charged once the body is decoded (`categorize`): the time budget
        counts work that exists, not uploads in progress."""
        self._check_closed()
        size = declared or 0
        self._check_bytes(size, self.pending_bytes)
        if self.pending_seconds > self.max_queue_seconds:
            self._refuse(
                "queue_time",
                f"the server is busy: about {self.pending_seconds:.1f} s of work is queued "
                f"(limit {self.max_queue_seconds:g} s)",
            )
        self.pending_requests += 1
        self.pending_bytes += size
        return Ticket(size)

    def grow(self, ticket: Ticket, nbytes: int) -> None:
        """The request's body has reached `nbytes`: charge what exceeds its charge so far
        (a chunked body), or refuse the request (ApiError 503) if that no longer fits
        beside the other requests' bytes."""
        extra = nbytes - ticket.nbytes
        if extra <= 0:
            return
        self._check_bytes(nbytes, self.pending_bytes - ticket.nbytes)
        ticket.nbytes = nbytes
        self.pending_bytes += extra

    def release(self, ticket: Ticket) -> None:
        """The request is answered (or failed): its budget is free again."""
        if ticket.released:
            return
        ticket.released = True
        self.pending_requests -= 1
        self.pending_bytes -= ticket.nbytes
        self.pending_seconds -= ticket.seconds
        if ticket.seconds:
            self._decoded_bytes -= ticket.nbytes
        self._since_trim += ticket.nbytes
        self._last_release = self._clock()
        if self.pending_requests == 0:
            self.pending_seconds = 0.0  # no float drift left over from the sums
            self._schedule_trim()

    def retry_after(self) -> float:
        """Seconds until the work pending now is done, bodies still arriving included
        (a byte is about a character): when a refused client may retry."""
        arriving = self.pending_bytes - self._decoded_bytes
        return self.pending_seconds + self.cost.estimate(arriving)

    def _check_closed(self) -> None:
        if self._closed:
            self._refuse("shutting_down", "the server is shutting down")

    def _check_bytes(self, nbytes: int, others: int) -> None:
        # Other requests' bytes only: a worker with nothing else pending takes any body
        # up to MAX_BODY_BYTES, even one over MAX_PENDING_BYTES.
        if others and others + nbytes > self.max_pending_bytes:
            self._refuse(
                "pending_bytes",
                f"the server is busy: {others} bytes of requests are pending "
                f"(limit {self.max_pending_bytes})",
            )

    def _refuse(self, reason: str, detail: str) -> None:
        self._metrics.observe_refused(reason)
        raise ApiError.overloaded(detail, self.retry_after())

    # -- running ---------------------------------------------------------------

    async def categorize(
        self,
        ticket: Ticket,
        titles: List[str],
        tags: List[str],
        fields: Mapping[str, Column],
        chars: int,
        gone: Callable[[], bool],
    ) -> Prediction:
        """The categories and probabilities of an admitted request's products, in order.
        `fields`: a column per listing field some product sent (runtime.categorizer's
        names and values); `chars`: the characters of its titles and tags. `gone()`
        tells whether its client has left; ApiError(503 or 499) when it is not run."""
        chars += ROW_CHARS * len(titles)
        if self._closed and self._queued_seconds() >= self._keep_seconds:
            # Admitted before the drain ended, its body read only after: it runs if it
            # would start within the grace, like the queue it joins.
            self._refuse("shutting_down", "the server is shutting down")
        ticket.seconds = self.cost.estimate(chars)
        self.pending_seconds += ticket.seconds
        self._decoded_bytes += ticket.nbytes
        if not self._busy() and not self._batchable(len(titles)) and chars <= self._inline_max_chars:
            # Idle and nothing to share a call with: run now, with no queue hop.
            self.calls += 1
            self.requests += 1
            return self._timed_call(_columns(titles, tags, fields), chars)
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(ticket, titles, tags, fields, chars, gone, future, self._clock()))
        self._schedule_flush()
        return await future

    def refuse_queued(self, keep_seconds: float = 0.0) -> int:
        """Shutdown: answers 503 at once to the queued requests that would not start
        within `keep_seconds` (after a burst, their clients would have given up by the
        time they ran; told now, they retry elsewhere). The requests ahead of them, a
        light load's few, still run. Returns how many were refused."""
        kept: Deque[_Job] = deque()
        ahead = 0.0
        refused = 0
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():
                continue
            if ahead >= keep_seconds:
                self._fail(job, "shutting_down", self._shutting_down_error())
                refused += 1
                continue
            ahead += job.ticket.seconds
            kept.append(job)
        self._queue = kept
        return refused

    def close(self, keep_seconds: float = 0.0) -> int:
        """End of the drain: every new request is refused, and so is queued work that
        would not start within `keep_seconds` (the grace). Returns how many were queued
        and refused."""
        self._closed = True
        self._keep_seconds = keep_seconds
        return self.refuse_queued(keep_seconds)

    def _queued_seconds(self) -> float:
        return sum(job.ticket.seconds for job in self._queue)

    def _batchable(self, rows: int) -> bool:
        return rows < self.batch_max_products

    def _busy(self) -> bool:
        return self._flush_due or self._handed > 0

    def _schedule_flush(self) -> None:
        if self._queue and not self._flush_due and self._handed < HANDED_MAX:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        jobs = self._take()
        if jobs:
            self.calls += 1
            self.requests += len(jobs)
            if sum(job.chars for job in jobs) <= self._inline_max_chars:
                self._deliver(jobs, self._run(jobs))
            else:
                self._handed += 1
                running = asyncio.get_running_loop().run_in_executor(self._executor, self._run, jobs)
                running.add_done_callback(lambda done: self._on_done(jobs, done))
        self._schedule_flush()

    def _take(self) -> List[_Job]:
        """The next call's jobs: the head of the queue, and the small requests right
        behind a small head, up to BATCH_MAX_PRODUCTS products."""
        jobs: List[_Job] = []
        rows = 0
        now = self._clock()
        while self._queue:
            job = self._queue[0]
            size = len(job.titles)
            if jobs and (not self._batchable(size) or rows + size > self.batch_max_products):
                break
            self._queue.popleft()
            if not self._runnable(job, now):
                continue
            jobs.append(job)
            rows += len(job.titles)
            if not self._batchable(len(job.titles)):
                break  # a big request runs alone
        return jobs

    def _runnable(self, job: _Job, now: float) -> bool:
        if job.future.done():  # cancelled while queued
            return False
        waited = now - job.queued_at
        if job.gone():
            self._abandon(job)
            return False
        if waited > self.max_queue_seconds:
            detail = f"the server is busy: waited {waited:.1f} s (limit {self.max_queue_seconds:g} s)"
            self._fail(job, "queue_expired", ApiError.overloaded(detail, self.retry_after()))
            return False
        self._metrics.observe_queue_wait(waited)
        return True

    def _abandon(self, job: _Job) -> None:
        self._metrics.observe_abandoned()
        job.future.set_exception(ApiError.client_left())

    def _fail(self, job: _Job, reason: str, error: ApiError) -> None:
        self._metrics.observe_refused(reason)
        job.future.set_exception(error)

    def _shutting_down_error(self) -> ApiError:
        return ApiError.overloaded("the server is shutting down", self.retry_after())

    def _run(self, jobs: List[_Job]) -> Tuple[List[Outcome], float]:
        """Each job's prediction, its own exception or _ABANDONED (its client left while
        the call waited on the thread), and the seconds the call took. Runs on the loop
        or the model thread."""
        live = [job for job in jobs if not job.gone()]
        outcomes, seconds = self._compute(live) if live else ([], 0.0)
        by_job = {id(job): outcome for job, outcome in zip(live, outcomes)}
        return [by_job.get(id(job), _ABANDONED) for job in jobs], seconds

    def _compute(self, jobs: List[_Job]) -> Tuple[List[Outcome], float]:
        # A request alone may be big (up to 40 sub-batches): stop it if its client leaves.
        gone = jobs[0].gone if len(jobs) == 1 else None
        try:
            start = time.perf_counter()
            merged = predict_in_sub_batches(self._model, _merged(jobs), gone)
            seconds = time.perf_counter() - start
        except _ClientLeft:
            return [_ABANDONED], 0.0
        except Exception as exc:  # noqa: BLE001 - which request caused it is unknown: run each alone
            if len(jobs) == 1:
                return [exc], 0.0
            return [self._alone(job) for job in jobs], 0.0
        return _split(merged, [len(job.titles) for job in jobs], seconds), seconds

    def _timed_call(self, columns: Mapping[str, Column], chars: int) -> Prediction:
        start = time.perf_counter()
        categories, probabilities = predict_in_sub_batches(self._model, columns)
        seconds = time.perf_counter() - start
        self.cost.observe(chars, seconds)
        return Prediction(categories, probabilities, seconds)

    def _alone(self, job: _Job) -> Outcome:
        try:
            start = time.perf_counter()
            columns = _columns(job.titles, job.tags, job.fields)
            categories, probabilities = predict_in_sub_batches(self._model, columns)
            return Prediction(categories, probabilities, time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - handed to this job's caller, who re-raises it
            return exc

    def _on_done(self, jobs: List[_Job], done: asyncio.Future[Tuple[List[Outcome], float]]) -> None:
        # _run returns exceptions rather than raising them: only a cancelled hand-off
        # (executor shut down) gets here without results.
        self._handed -= 1
        if done.cancelled() or done.exception() is not None:
            self._deliver(jobs, ([RuntimeError("model thread unavailable")] * len(jobs), 0.0))
        else:
            self._deliver(jobs, done.result())
        self._schedule_flush()

    def _deliver(self, jobs: List[_Job], results: Tuple[List[Outcome], float]) -> None:
        outcomes, seconds = results
        if seconds:
            computed = [job for job, outcome in zip(jobs, outcomes) if outcome is not _ABANDONED]
            self.cost.observe(sum(job.chars for job in computed), seconds)
        for job, outcome in zip(jobs, outcomes):
            if job.future.done():
                continue
            if isinstance(outcome, _Abandoned):
                self._abandon(job)
            elif isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    # -- memory ----------------------------------------------------------------

    def _schedule_trim(self) -> None:
        if self._since_trim < TRIM_AFTER_BYTES or self._trim_timer is not None:
            return
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_DELAY_SECONDS, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        # Only after a whole quiet TRIM_DELAY_SECONDS: between the requests of a steady
        # load the worker is often idle for an instant, and trimming then would only
        # make the next requests fault their pages back in.
        self._trim_timer = None
        if self.pending_requests:  # busy again: its release will schedule the next try
            return
        quiet = self._clock() - self._last_release
        if quiet < TRIM_DELAY_SECONDS:
            self._trim_timer = asyncio.get_running_loop().call_later(
                TRIM_DELAY_SECONDS - quiet, self._trim_if_idle
            )
            return
        self._since_trim = 0
        self._trim()


class _ClientLeft(Exception):
    """Raised between sub-batches when the only client of a call has left."""


def _columns(titles: List[str], tags: List[str], fields: Mapping[str, Column]) -> Dict[str, Column]:
    return {INPUT_TITLE: titles, INPUT_TAGS: tags, **fields}


def _merged(jobs: List[_Job]) -> Dict[str, Column]:
    """One call's columns: each job's rows in turn. A field that only some of the jobs
    sent is unknown in the others' rows."""
    if len(jobs) == 1:
        return _columns(jobs[0].titles, jobs[0].tags, jobs[0].fields)
    columns: Dict[str, Column] = {
        INPUT_TITLE: [title for job in jobs for title in job.titles],
        INPUT_TAGS: [tag for job in jobs for tag in job.tags],
    }
    for name in dict.fromkeys(name for job in jobs for name in job.fields):
        columns[name] = [value for job in jobs for value in _field(job, name)]
    return columns


def _field(job: _Job, name: str) -> Column:
    column = job.fields.get(name)
    if column is not None:
        return column
    # The runtime's "no value": "" in its one string input among the fields, None in numbers.
    unknown: Any = "" if name == INPUT_SELLER else None
    return [unknown] * len(job.titles)


def predict_in_sub_batches(
    model: Model, columns: Mapping[str, Column], gone: Optional[Callable[[], bool]] = None
) -> Tuple[List[str], np.ndarray]:
    """One category and one row of probabilities per product of `columns` (one column per
    model input, `title` and `concatenated_tags` required), in order; big inputs in
    sub-batches sorted by length, every column cut by the same rows, given up between
    two of them (_ClientLeft) once `gone()` says the client left."""
    titles, tags = columns[INPUT_TITLE], columns[INPUT_TAGS]
    if len(titles) <= SUB_BATCH_ROWS:
        return model.predict_with_probabilities(columns)
    order = sorted(range(len(titles)), key=lambda i: len(titles[i]) + len(tags[i]))
    categories = [""] * len(titles)
    probabilities: Optional[np.ndarray] = None
    for start in range(0, len(order), SUB_BATCH_ROWS):
        if gone is not None and gone():
            raise _ClientLeft
        rows = order[start : start + SUB_BATCH_ROWS]
        part = {name: [column[i] for i in rows] for name, column in columns.items()}
        batch, batch_probabilities = model.predict_with_probabilities(part)
        if probabilities is None:
            probabilities = np.empty((len(titles), batch_probabilities.shape[1]), batch_probabilities.dtype)
        probabilities[rows] = batch_probabilities
        for i, category in zip(rows, batch):
            categories[i] = category
    assert probabilities is not None  # more than SUB_BATCH_ROWS titles: at least one sub-batch
    return categories, probabilities


def _split(merged: Tuple[List[str], np.ndarray], sizes: List[int], seconds: float) -> List[Outcome]:
    categories, probabilities = merged
    results: List[Outcome] = []
    start = 0
    for size in sizes:
        end = start + size
        results.append(Prediction(categories[start:end], probabilities[start:end], seconds))
        start = end
    return results
