"""Starting the servers under test, waiting for them, and reading their workers' RSS (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from bench.payloads import ROOT

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A server process (`python api.py` or the raw HTTP server) on a free local port."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
        full_env.update(HOST="127.0.0.1", PORT=str(self.port), LOG_LEVEL="WARNING")
        full_env.update(env or {})
        self.startup_seconds = 0.0
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd or str(ROOT),
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._wait_ready(ready_path, start)

    def _wait_ready(self, path: str, start: float) -> None:
        deadline = start + START_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {err.strip()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        self.startup_seconds = time.perf_counter() - start
                        self._wait_all_listening(deadline)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"server not ready after {START_TIMEOUT:.0f} s")

    def _wait_all_listening(self, deadline: float) -> None:
        """The first ready worker answers /readyz; keep-alive connections opened before
        the others listen would all stay on it, so wait for every worker's listener."""
        while time.perf_counter() < deadline:
            listening = listening_inodes(self.port)
            pids = self.worker_pids()
            if all(_socket_inodes(pid) & listening for pid in pids):
                return
            time.sleep(0.01)

    def worker_pids(self) -> List[int]:
        """The processes doing the serving: the children, or the process itself with WORKERS=1."""
        children = _children(self.proc.pid)
        return children or [self.proc.pid]

    def worker_rss_mb(self) -> List[float]:
        return [rss_mb(pid) for pid in self.worker_pids()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the parent forwards it to its workers
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def service(env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Server:
    # DRAIN_SECONDS=0: the benchmark stops the service at once; nothing else changes.
    return Server(["api.py"], {"DRAIN_SECONDS": "0", **(env or {})}, cwd=cwd)


def anchor() -> Server:
    """Flask + gunicorn around a pickled TF-IDF + LR (bench/anchor.py); trains on first use."""
    return Server(["-m", "bench.anchor"], ready_path="/healthz")


def raw_http(workers: int) -> Server:
    return Server(["-m", "bench.rawserver", "--workers", str(workers)], ready_path="/healthz")


def _children(pid: int) -> List[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    pids = [int(p) for p in text.split()]
    # multiprocessing may add a resource tracker; keep the actual servers.
    return [p for p in pids if "resource_tracker" not in _cmdline(p)]


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


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
