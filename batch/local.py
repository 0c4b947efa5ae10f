"""The local engine: INPUT streamed in record batches, scored by a pool of processes (one
single-threaded onnxruntime session each), written in input order.

This process reads and writes; the pool scores. At most `IN_FLIGHT_PER_PROCESS` batches
per process are out at once, so memory stays flat whatever the file's size (a plain
`Pool.imap` would read the whole file ahead).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Iterator, List, Optional, Sequence, Tuple, TypeVar, cast

import pyarrow as pa

from batch import fields, scoring
from batch.io import Input, Output, use_jemalloc
from batch.job import Job, JobError, Refused
from batch.report import Progress, Summary

# Batches handed out per process beyond the one it runs: the next is ready when it ends.
IN_FLIGHT_PER_PROCESS = 2
# The signals that stop a job: the parent's to act on, never a scoring process's.
_STOPS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Longest a stopped job waits for its pool's manager thread to end.
ABANDON_SECONDS = 10.0

_T = TypeVar("_T")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), as the service counts workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(job: Job, progress: Progress) -> Summary:
    started = time.perf_counter()
    use_jemalloc()  # before the pool starts: its processes inherit the choice
    source = Input(job.input)
    scoring.check_columns(source.schema.names, job.input)
    schema = scoring.output_schema(source.schema)
    summary = Summary()
    processes = job.processes or cpu_count()
    with Output(job.output, schema) as out, _pool(processes) as pool, _pool_errors():
        # A model that does not load fails here, before any row is read.
        inputs = pool.submit(_model_inputs, job.model).result()
        take = scoring.model_columns(source.schema.names, inputs, job.input)
        progress.start(source.rows)
        for batch, scored in _in_order(pool, processes, job.model, source.batches(), take):
            problem = _first_problem(batch, scored, summary.rows) if job.strict else None
            if problem:
                raise Refused(f"--strict: {problem}")
            out.write(scoring.with_scores(batch, scored, schema))
            _count(summary, batch, scored)
            progress.advance(batch.num_rows)
        out.commit()
    summary.seconds = time.perf_counter() - started
    return summary


def _count(summary: Summary, batch: pa.RecordBatch, scored: scoring.Scored) -> None:
    summary.rows += batch.num_rows
    summary.skipped += len(scored.blank)
    for name, rows in scored.invalid.items():
        summary.count_invalid(name, len(rows))


def _first_problem(batch: pa.RecordBatch, scored: scoring.Scored, before: int) -> Optional[str]:
    """The first row of the batch that --strict refuses, said in one line; `before`: the
    rows of the batches before it."""
    found = [(rows[0], name) for name, rows in scored.invalid.items() if rows]
    if scored.blank:
        found.append((scored.blank[0], ""))
    if not found:
        return None
    at, name = min(found)  # a blank title before a field of the same row: it sorts first
    row = f"row {before + at + 1:,} (counting from 1)"
    if not name:
        return f"{row} has a missing or blank title"
    value = " ".join(str(batch.column(name)[at].as_py()).split())[:80]
    return f"{row} has an invalid {name!r}: {value!r}, not {fields.rule(name)}"


def _in_order(
    pool: Executor, processes: int, model: str, batches: Iterator[pa.RecordBatch], take: Sequence[str]
) -> Iterator[Tuple[pa.RecordBatch, scoring.Scored]]:
    """Each batch with its scores, in input order, with a bounded number out at once."""
    pending: Deque[Tuple[pa.RecordBatch, Future[scoring.Scored]]] = deque()
    limit = IN_FLIGHT_PER_PROCESS * processes
    for batch in batches:
        # Only the model's columns travel to the scoring process.
        pending.append((batch, pool.submit(_score, model, batch.select(take))))
        if len(pending) >= limit:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


@contextlib.contextmanager
def _pool(processes: int) -> Iterator[Executor]:
    if processes == 1:
        yield _InProcess()  # no pool to start: small files, tests, debugging
        return
    # spawn, not fork: a fork of this process would inherit pyarrow's reader threads.
    context = multiprocessing.get_context("spawn")
    pool = _ScoringPool(processes, mp_context=context, initializer=_scorer_start, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        _abandon(pool)
        raise
    pool.shutdown()


class _ScoringPool(ProcessPoolExecutor):
    """A process pool whose scoring processes leave stops to this one (_stops_held)."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        with _stops_held():  # a submit may start a scoring process
            return super().submit(fn, *args, **kwargs)


@contextlib.contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C and `timeout` signal the whole process group, the scoring processes with
    it; one that died of it would race its parent's own stop with a broken pool, and
    print a traceback for Ctrl-C. A scoring process starts in a submit: it inherits this
    thread's blocked signals, and ignores them (_scorer_start) before unblocking them. In
    this process they are only held until the submit returns."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _scorer_start(parent: int) -> None:
    """A scoring process's initializer: stops are its parent's to act on (_stops_held),
    and it dies with its parent."""
    for stop in _STOPS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    if sys.platform.startswith("linux"):
        # Ignoring SIGTERM, it would outlive a parent killed with SIGKILL (the OOM
        # killer), blocked on its queue: the kernel kills it when the parent dies.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that
        os._exit(1)


def _abandon(pool: _ScoringPool) -> None:
    """Stops a pool without waiting for its work: the job has failed or been stopped.

    A pool whose processes died (killed here, or one by the OOM killer) never finished
    shutting down on Python 3.9: the thread that feeds it batches stays blocked writing
    one into a full pipe that only the dead processes read, and the executor joins that
    thread, at `shutdown` and again at exit. Closing
    this process's end of the pipe lets the write fail (the executor ignores that EPIPE)
    and the thread end. The executor keeps these objects private; tests/test_batch_local.py
    pins the behaviour."""
    private = cast(Any, pool)
    for process in list(private._processes.values()):
        process.kill()
    if not hasattr(private._call_queue, "_terminate_broken"):
        # Newer Pythons close that end themselves once the pool is broken (CPython
        # gh-94777): closing it here too raced their manager thread (EBADF).
        private._call_queue._reader.close()
    manager = private._executor_manager_thread  # None until the first submit
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        # Its own clean-up (joining the feeder, closing its wake-up pipe) raced the
        # executor's exit hook, which wrote to that pipe ("Exception ignored in
        # threading._shutdown"). Bounded: a pool must not keep a stopped job alive.
        manager.join(ABANDON_SECONDS)


@contextlib.contextmanager
def _pool_errors() -> Iterator[None]:
    try:
        yield
    except BrokenProcessPool:
        raise JobError(
            "a scoring process ended abruptly (killed, or out of memory?); OUTPUT was not written"
        ) from None


def _model_inputs(path: str) -> List[str]:
    return list(scoring.model_for(path).inputs)


def _score(path: str, inputs: pa.RecordBatch) -> scoring.Scored:
    return scoring.score(scoring.model_for(path), inputs)


class _InProcess(Executor):
    """An Executor that runs each call at once, in this process."""

    def submit(self, fn: Callable[..., _T], /, *args: object, **kwargs: object) -> Future[_T]:
        future: Future[_T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future
