"""Every decision about a worker's model work: admission, queue, batching, inline or
thread, sub-batches. Handlers speak HTTP and hand their products here.

**Admission**, before a body is read. A request is admitted from its Content-Length
(a chunked body as its chunks arrive) against two budgets of the work admitted and
not yet answered:

- *bytes* (`MAX_PENDING_BYTES`): a waiting request holds its body, then its decoded
  strings, so its memory follows its size; the budget bounds the worker's memory
  whatever the number of clients;
- *time* (`MAX_QUEUE_SECONDS`): the model time of the work admitted ahead of a request,
  estimated from its bytes (`CostModel`). A request that would wait longer is refused
  now rather than answered late, and `Retry-After` says when that work will be done.

A refused request gets 503 with `Retry-After` (the handler first reads and drops the
rest of its body, so that an uploading client sees the answer, not a reset).

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
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Deque, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

from service.errors import ApiError
from service.metrics import Metrics

# Rows per model call for big requests: one call's padded memory grows with rows x
# longest string, and 256 rows already amortise the per-call cost.
SUB_BATCH_ROWS = 256
# Batches up to this many characters (titles + tags) run on the event loop: at most a
# few milliseconds of stall, and with one worker process per core the thread hand-off
# only adds switches (see docs/decisions.md).
INLINE_MAX_CHARS = 8192
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
    """What the scheduler needs of service.categorizer.Categorizer."""

    def predict(self, titles: Sequence[str], tags: Sequence[str]) -> List[str]: ...


class _Abandoned:
    """The outcome of a job whose client left while its call waited on the thread."""


_ABANDONED = _Abandoned()
# One request's categories, the exception its products alone raised, or _ABANDONED.
Outcome = Union[List[str], BaseException, _Abandoned]


class CostModel:
    """Model seconds a request will cost, from its body bytes.

    Bytes are known before the body is read, and they follow the characters the model
    reads (the cost) closely; products do not (titles range from 10 to 1,000
    characters). The rate is learned from the calls themselves, so the estimate
    follows the machine's speed.
    """

    # Seed, until calls are measured: ~0.3 us a character on the development machine.
    SECONDS_PER_BYTE = 0.3e-6
    SECONDS_PER_REQUEST = 50e-6  # JSON, HTTP and the call's fixed cost
    MIN_BYTES_TO_LEARN = 16 * 1024  # smaller calls measure their fixed cost, not bytes
    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.seconds_per_byte = self.SECONDS_PER_BYTE

    def estimate(self, nbytes: int) -> float:
        return self.SECONDS_PER_REQUEST + nbytes * self.seconds_per_byte

    def observe(self, nbytes: int, seconds: float) -> None:
        if nbytes >= self.MIN_BYTES_TO_LEARN:
            self.seconds_per_byte += self.SMOOTHING * (seconds / nbytes - self.seconds_per_byte)


class Ticket:
    """One admitted request's share of the budgets, until it is answered."""

    __slots__ = ("nbytes", "released", "seconds")

    def __init__(self, nbytes: int, seconds: float) -> None:
        self.nbytes = nbytes
        self.seconds = seconds
        self.released = False


class _Job(NamedTuple):
    ticket: Ticket
    titles: List[str]
    tags: List[str]
    chars: int
    gone: Callable[[], bool]  # whether the client has left
    future: asyncio.Future[List[str]]
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
        self._since_trim = 0  # body bytes answered since memory was last given back
        self._trim_timer: Optional[asyncio.TimerHandle] = None
        self._last_release = 0.0
        # Gauges and counters, read by /metrics and the tests.
        self.pending_requests = 0
        self.pending_bytes = 0
        self.pending_seconds = 0.0
        self.calls = 0
        self.requests = 0

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    # -- admission -------------------------------------------------------------

    def admit(self, nbytes: Optional[int]) -> Ticket:
        """A ticket for a request of `nbytes` body bytes (None: chunked, counted as read),
        or ApiError(503) with Retry-After when the budgets cannot take it."""
        size = nbytes or 0
        self._check(size, wait=self.pending_seconds)
        ticket = Ticket(size, self.cost.estimate(size))
        self.pending_requests += 1
        self.pending_bytes += size
        self.pending_seconds += ticket.seconds
        return ticket

    def grow(self, ticket: Ticket, nbytes: int) -> None:
        """A chunked body has reached `nbytes`: count it, or refuse the request."""
        extra = nbytes - ticket.nbytes
        if extra <= 0:
            return
        self._check(extra, wait=0.0)  # already admitted: only memory can refuse it now
        seconds = self.cost.estimate(nbytes) - ticket.seconds
        ticket.nbytes = nbytes
        ticket.seconds += seconds
        self.pending_bytes += extra
        self.pending_seconds += seconds

    def release(self, ticket: Ticket) -> None:
        """The request is answered (or failed): its budget is free again."""
        if ticket.released:
            return
        ticket.released = True
        self.pending_requests -= 1
        self.pending_bytes -= ticket.nbytes
        self.pending_seconds -= ticket.seconds
        self._since_trim += ticket.nbytes
        self._last_release = self._clock()
        if self.pending_requests == 0:
            self.pending_seconds = 0.0  # no float drift left over from the sums
            self._schedule_trim()

    def retry_after(self) -> float:
        """Seconds until the work admitted so far is done: when a refused client may retry."""
        return self.pending_seconds

    def _check(self, nbytes: int, wait: float) -> None:
        if self._closed:
            self._refuse("shutting_down", "the server is shutting down")
        if self.pending_requests and self.pending_bytes + nbytes > self.max_pending_bytes:
            self._refuse(
                "pending_bytes",
                f"the server is busy: {self.pending_bytes} bytes of requests are pending "
                f"(limit {self.max_pending_bytes})",
            )
        if wait > self.max_queue_seconds:
            self._refuse(
                "queue_time",
                f"the server is busy: about {wait:.1f} s of work is queued "
                f"(limit {self.max_queue_seconds:g} s)",
            )

    def _refuse(self, reason: str, detail: str) -> None:
        self._metrics.observe_refused(reason)
        raise ApiError.overloaded(detail, self.retry_after())

    # -- running ---------------------------------------------------------------

    async def categorize(
        self, ticket: Ticket, titles: List[str], tags: List[str], chars: int, gone: Callable[[], bool]
    ) -> List[str]:
        """The categories of an admitted request's products, in order. `gone()` tells
        whether its client has left; ApiError(503 or 499) when it is not run."""
        if self._closed:  # admitted before the drain ended, its body read only after
            self._refuse("shutting_down", "the server is shutting down")
        if not self._busy() and not self._batchable(len(titles)) and chars <= self._inline_max_chars:
            # Idle and nothing to share a call with: run now, with no queue hop.
            self.calls += 1
            self.requests += 1
            return self._timed_call(titles, tags, ticket.nbytes)
        future: asyncio.Future[List[str]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(ticket, titles, tags, chars, gone, future, self._clock()))
        self._schedule_flush()
        return await future

    def refuse_queued(self) -> int:
        """Answers 503 to every request waiting for the model (shutdown): nobody is left
        to read what they would compute. Returns how many."""
        refused = 0
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                self._fail(job, "shutting_down", self._shutting_down_error())
                refused += 1
        return refused

    def close(self) -> int:
        """From now on every request is refused; the queue too. Returns how many were queued."""
        self._closed = True
        return self.refuse_queued()

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
            self._metrics.observe_abandoned()
            job.future.set_exception(ApiError.client_left())
            return False
        if waited > self.max_queue_seconds:
            detail = f"the server is busy: waited {waited:.1f} s (limit {self.max_queue_seconds:g} s)"
            self._fail(job, "queue_expired", ApiError.overloaded(detail, self.retry_after()))
            return False
        self._metrics.observe_queue_wait(waited)
        return True

    def _fail(self, job: _Job, reason: str, error: ApiError) -> None:
        self._metrics.observe_refused(reason)
        job.future.set_exception(error)

    def _shutting_down_error(self) -> ApiError:
        return ApiError.overloaded("the server is shutting down", self.retry_after())

    def _run(self, jobs: List[_Job]) -> Tuple[List[Outcome], float]:
        """Each job's categories, its own exception or _ABANDONED (its client left while
        the call waited on the thread), and the seconds the call took. Runs on the loop
        or the model thread."""
        live = [job for job in jobs if not job.gone()]
        outcomes, seconds = self._compute(live) if live else ([], 0.0)
        by_job = {id(job): outcome for job, outcome in zip(live, outcomes)}
        return [by_job.get(id(job), _ABANDONED) for job in jobs], seconds

    def _compute(self, jobs: List[_Job]) -> Tuple[List[Outcome], float]:
        nbytes = sum(job.ticket.nbytes for job in jobs)
        titles = [job.titles for job in jobs]
        tags = [job.tags for job in jobs]
        try:
            start = time.perf_counter()
            merged = self._call(titles, tags)
            seconds = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - which request caused it is unknown: run each alone
            if len(jobs) == 1:
                return [exc], 0.0
            return [self._alone(job) for job in jobs], 0.0
        return _split(merged, [len(t) for t in titles]), seconds if nbytes else 0.0

    def _timed_call(self, titles: List[str], tags: List[str], nbytes: int) -> List[str]:
        start = time.perf_counter()
        categories = predict_in_sub_batches(self._model, titles, tags)
        self.cost.observe(nbytes, time.perf_counter() - start)
        return categories

    def _call(self, titles: List[List[str]], tags: List[List[str]]) -> List[str]:
        flat_titles = [title for group in titles for title in group]
        flat_tags = [tag for group in tags for tag in group]
        return predict_in_sub_batches(self._model, flat_titles, flat_tags)

    def _alone(self, job: _Job) -> Outcome:
        try:
            return predict_in_sub_batches(self._model, job.titles, job.tags)
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
            self.cost.observe(sum(job.ticket.nbytes for job in jobs), seconds)
        for job, outcome in zip(jobs, outcomes):
            if job.future.done():
                continue
            if isinstance(outcome, _Abandoned):
                self._metrics.observe_abandoned()
                job.future.set_exception(ApiError.client_left())
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


def predict_in_sub_batches(model: Model, titles: List[str], tags: List[str]) -> List[str]:
    """One category per title, in order; big inputs in sub-batches sorted by length."""
    if len(titles) <= SUB_BATCH_ROWS:
        return model.predict(titles, tags) if titles else []
    order = sorted(range(len(titles)), key=lambda i: len(titles[i]) + len(tags[i]))
    categories = [""] * len(titles)
    for start in range(0, len(order), SUB_BATCH_ROWS):
        rows = order[start : start + SUB_BATCH_ROWS]
        batch = model.predict([titles[i] for i in rows], [tags[i] for i in rows])
        for i, category in zip(rows, batch):
            categories[i] = category
    return categories


def _split(merged: List[str], sizes: List[int]) -> List[Outcome]:
    results: List[Outcome] = []
    start = 0
    for size in sizes:
        results.append(merged[start : start + size])
        start += size
    return results
