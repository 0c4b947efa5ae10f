"""The one harness for server processes, shared by bench/ and tests/: starting them,
waiting until every worker listens, finding the workers, reading their memory (Linux
/proc) and stopping them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Set, Union

from bench.payloads import ROOT

# Generous: only bounds how long a broken server can hang a run.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A local TCP port nothing listens on now (the OS may hand it out again later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def api_env(**overrides: str) -> Dict[str, str]:
    """The environment of a server under test: this one's, on loopback, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
    env.update(HOST="127.0.0.1", LOG_LEVEL="WARNING")
    env.update(overrides)
    return env


def spawn(
    argv: Sequence[str], env: Dict[str, str], cwd: Optional[str] = None, logs: Optional[Path] = None
) -> subprocess.Popen[str]:
    """`python ARGV...`; output to files in `logs` (stdout.log, stderr.log), else to pipes.

    Under load a server may log more than a pipe holds (64 KiB) before anyone reads
    it, and a worker blocked on a full pipe would stall the very traffic under test:
    long runs should pass `logs`."""
    out: Union[int, IO[str]] = subprocess.PIPE
    err: Union[int, IO[str]] = subprocess.PIPE
    with contextlib.ExitStack() as files:
        if logs is not None:
            out = files.enter_context((logs / "stdout.log").open("w"))
            err = files.enter_context((logs / "stderr.log").open("w"))
        return subprocess.Popen(
            [sys.executable, *argv], cwd=cwd or str(ROOT), env=env, stdout=out, stderr=err, text=True
        )


def wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = START_TIMEOUT) -> None:
    """Until `url` answers 200; RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err.strip()}")
        # Refused while starting; URLError and HTTPError are OSErrors too.
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.01)
    raise RuntimeError(f"server not ready after {timeout:.0f} s")


def wait_all_listening(proc: subprocess.Popen[str], port: int, timeout: float = START_TIMEOUT) -> None:
    """Until every worker has its listener: the first ready worker answers readiness,
    and keep-alive connections opened before the others listen would all stay on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        listening = listening_inodes(port)
        pids = worker_pids(proc.pid) or [proc.pid]
        if all(_socket_inodes(pid) & listening for pid in pids):
            return
        time.sleep(0.01)
    raise RuntimeError(f"not every worker listens on {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[str], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (a supervisor forwards it to its workers); SIGKILL to it and its workers
    if it will not exit, so that no orphaned worker keeps the port."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            workers = worker_pids(proc.pid)
            proc.kill()
            proc.wait()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for pipe in (proc.stdout, proc.stderr):  # unread pipes would warn when collected
        if pipe is not None:
            pipe.close()


class Server:
    """A server process (`python api.py`, the anchor or the raw HTTP server) on a free
    local port, ready and with every worker listening once constructed."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        ready_path: str = "/readyz",
        logs: Optional[Path] = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = logs
        start = time.perf_counter()
        self.proc = spawn(argv, api_env(PORT=str(self.port), **(env or {})), cwd, logs)
        try:
            wait_ready(self.proc, self.url + ready_path)
            self.startup_seconds = time.perf_counter() - start
            wait_all_listening(self.proc, self.port)
        except RuntimeError:
            self.stop()
            raise

    def worker_pids(self) -> List[int]:
        """The processes doing the serving: the children, or the process itself with WORKERS=1."""
        return worker_pids(self.proc.pid) or [self.proc.pid]

    def worker_rss_mb(self) -> List[float]:
        return [rss_bytes(pid) / 2**20 for pid in self.worker_pids()]

    def tree_rss_mb(self) -> float:
        """The whole process tree: supervisor, workers and multiprocessing's helpers."""
        return tree_rss_bytes(self.proc.pid) / 2**20

    def stderr_text(self) -> str:
        return (self.logs / "stderr.log").read_text() if self.logs is not None else ""

    def stop(self) -> None:
        stop(self.proc)


def service(env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Server:
    # DRAIN_SECONDS=0: the benchmark stops the service at once; nothing else changes.
    return Server(["api.py"], {"DRAIN_SECONDS": "0", **(env or {})}, cwd=cwd)


def anchor(model: str) -> Server:
    """Flask + gunicorn around a pickled TF-IDF + LR (bench/anchor.py, `word` or `word_char`);
    trains on first use."""
    return Server(["-m", "bench.anchor", "--model", model], ready_path="/healthz")


def raw_http(workers: int) -> Server:
    return Server(["-m", "bench.rawserver", "--workers", str(workers)], ready_path="/healthz")


def children(pid: int) -> List[int]:
    """A process's children, less multiprocessing's resource tracker: its workers."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [p for p in map(int, text.split()) if "resource_tracker" not in _cmdline(p)]


def worker_pids(pid: int) -> List[int]:
    return children(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_inodes(port: int) -> Set[str]:
    """Inodes of the sockets listening on `port`: one per worker (SO_REUSEPORT). Linux only."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> Set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def rss_bytes(pid: int) -> int:
    """Resident memory of one process; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = rss_bytes(pid)
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    return total + sum(tree_rss_bytes(kid) for kid in kids)


class PeakRss:
    """The peak RSS of a process tree while in the `with` block, sampled on a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.interval)
