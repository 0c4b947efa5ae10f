"""Several worker processes on one port (SO_REUSEPORT), watched by this parent.

- Workers are spawned (not forked): each builds its own app, event loop and model
  session from scratch, with no onnxruntime threads inherited from the parent.
- SIGTERM/SIGINT to the parent is forwarded to every worker, which drains and stops
  (see service.server); the parent exits 0 when they all exited 0. A worker is
  signalled only after it reported STARTED (stop signals blocked): before that, the
  default action would kill it, and a stop during start-up is not a crash.
- A worker that dies unexpectedly is NOT restarted: the parent drains the others
  and exits 1, so the orchestrator (Kubernetes, systemd, Docker) restarts the whole
  service with a clean state and the failure is visible, rather than hidden by a
  restart loop inside the container.
- A worker that cannot start (model, port) reports its one-line error; the parent
  prints it once and exits with EXIT_STARTUP.
- The workers share their metrics through files in one directory (prometheus-client's
  multiprocess mode, service/metrics.py): the parent creates it, or empties the one
  METRICS_DIR names, before the workers start, tells them where it is through the
  environment, drops a dead worker's gauges, and removes the files at exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection as mpc
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from service.logs import configure, log_serving
from service.settings import METRICS_DIR_VARIABLE, Settings
from service.signals import STOP_SIGNALS, accept_stop_signals, defer_stop_signals

log = logging.getLogger("categorizer")

EXIT_STARTUP = 3  # the model, the port or the metrics directory is unusable: fix the config
EXIT_WORKER_DIED = 1
STARTED = "started"  # stop signals are held back from here on: safe to signal
READY = "ready"
# Beyond drain + grace, workers get this long to exit before being killed.
STOP_MARGIN_SECONDS = 5.0


def worker_main(settings: Settings, conn: mpc.Connection) -> None:
    """Entry point of a worker process."""
    defer_stop_signals()
    conn.send(STARTED)
    from service.server import StartupError, run_worker  # here: keeps the parent light

    configure(settings.log_level)
    try:
        run_worker(settings, on_ready=lambda version: conn.send((READY, version)))
    except StartupError as exc:
        conn.send(str(exc))
        sys.exit(EXIT_STARTUP)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: Dict[int, BaseProcess] = {}  # by sentinel
        self.pipes: Dict[Any, BaseProcess] = {}  # parent end of each worker's pipe
        self.started: Set[int] = set()  # pids that reported STARTED: safe to signal
        self.ready: Dict[int, str] = {}  # pids that reported READY: the model version each loaded
        self.stopping = False
        self.exit_code = 0
        self.metrics_dir = ""  # where the workers keep their metrics, once created

    def run(self) -> int:
        configure(self.settings.log_level)
        with contextlib.ExitStack() as stack:
            try:
                self.metrics_dir = stack.enter_context(metrics_directory(self.settings.metrics_dir))
            except OSError as exc:
                where = self.settings.metrics_dir or tempfile.gettempdir()
                reason = exc.strerror or str(exc)
                print(f"error: cannot use {where!r} for the workers' metrics: {reason}", file=sys.stderr)
                return EXIT_STARTUP
            # Before the workers start: prometheus-client reads it when they import it.
            os.environ[METRICS_DIR_VARIABLE] = self.metrics_dir
            return self._run()

    def _run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        # Signals only write a byte to wake_w; the loop below reacts to it.
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda *_: None)
        try:
            self._spawn_all()
            accept_stop_signals()  # held back by api.py until the handlers above were set
            self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(previous_fd)
            wake_r.close()
            wake_w.close()
        return self.exit_code

    def _spawn_all(self) -> None:
        context = multiprocessing.get_context("spawn")
        for _ in range(self.settings.workers):
            parent_end, child_end = context.Pipe(duplex=False)
            process = context.Process(target=worker_main, args=(self.settings, child_end), daemon=False)
            process.start()
            child_end.close()
            self.workers[process.sentinel] = process
            self.pipes[parent_end] = process

    def _loop(self, wake: socket.socket) -> None:
        deadline: Optional[float] = None  # set once, when stopping starts
        killed = False
        while self.workers:
            timeout = None if deadline is None or killed else max(0.0, deadline - _now())
            events: List[Any] = mpc.wait([wake, *self.pipes, *self.workers], timeout)
            if not events and deadline is not None and not killed and _now() >= deadline:
                self._kill_all()  # once; then wait for the kills to be reaped
                killed = True
            for event in events:
                if event is wake:
                    self._on_signal(wake)
                elif event in self.pipes:
                    self._on_message(event)
                else:
                    self._on_exit(self.workers.pop(event))
            if self.stopping and deadline is None:
                deadline = _now() + self.settings.drain_seconds + self.settings.grace_seconds
                deadline += STOP_MARGIN_SECONDS

    def _on_signal(self, wake: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            wake.recv(64)
        self._stop_all()

    def _on_message(self, conn: Any) -> None:
        process = self.pipes[conn]
        try:
            message = conn.recv()
        except EOFError:  # the worker exited; its sentinel tells how
            del self.pipes[conn]
            return
        if message == STARTED:
            self.started.add(process.pid or 0)
            if self.stopping:  # the stop came before the worker could take it
                self._signal(process)
        elif isinstance(message, tuple) and message[0] == READY:
            self.ready[process.pid or 0] = message[1]
            if len(self.ready) == self.settings.workers and not self.stopping:
                # One version, unless the file changed while the workers loaded it.
                log_serving(self.settings, self.settings.workers, ",".join(sorted(set(self.ready.values()))))
        elif not self.stopping:  # a start-up error: report the first one only
            print(f"error: {message}", file=sys.stderr)
            self.exit_code = EXIT_STARTUP
            self._stop_all()

    def _on_exit(self, process: BaseProcess) -> None:
        process.join()
        if process.pid is not None:
            # Its gauges no longer count; its counters and histograms still do.
            from prometheus_client.multiprocess import mark_process_dead  # here: the parent stays light

            mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        # Its last message (a start-up error) may not have been read yet.
        for conn in [c for c, p in self.pipes.items() if p is process]:
            while conn in self.pipes and conn.poll():
                self._on_message(conn)
        if self.stopping:
            if process.exitcode != 0 and self.exit_code == 0:
                self.exit_code = EXIT_WORKER_DIED
            return
        log.error("worker exited unexpectedly", extra={"pid": process.pid, "exit_code": process.exitcode})
        self.exit_code = EXIT_WORKER_DIED
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping = True
        for process in self.workers.values():
            if process.pid in self.started:  # the others are signalled on STARTED
                self._signal(process)

    def _signal(self, process: BaseProcess) -> None:
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        seconds = self.settings.drain_seconds + self.settings.grace_seconds + STOP_MARGIN_SECONDS
        pids = [process.pid for process in self.workers.values()]
        log.error("workers did not stop in time; killing them", extra={"pids": pids, "seconds": seconds})
        self.exit_code = EXIT_WORKER_DIED
        for process in self.workers.values():
            process.kill()


def _now() -> float:
    return time.monotonic()


@contextlib.contextmanager
def metrics_directory(configured: str) -> Iterator[str]:
    """The workers' metrics directory: `configured` (created if missing) or a new private
    one. Its metric files are removed at the start, so that a previous run's counts are
    not added to this one's, and at the end, with the directory if it was created here."""
    if configured:
        path = Path(configured)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="categorizer-metrics-"))
        created = True
    try:
        _remove_metric_files(path)
        yield str(path)
    finally:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_metric_files(path)


def _remove_metric_files(path: Path) -> None:
    for file in path.glob("*.db"):  # prometheus-client's files, one per kind per worker
        file.unlink(missing_ok=True)
