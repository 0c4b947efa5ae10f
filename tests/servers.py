"""Running `python api.py` as a real process, for the process-level tests: the harness
of bench/procs.py, with pytest's failures and asyncio-friendly waits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from bench import procs

# Generous: only bounds how long a broken server can hang the test run.
START_TIMEOUT_SECONDS = procs.START_TIMEOUT
STOP_TIMEOUT_SECONDS = procs.STOP_TIMEOUT

unused_port = procs.free_port
api_env = procs.api_env
stop = procs.stop


class Launcher:
    """Starts `python api.py` processes on one port and stops any left running by a
    failed test. With `logs`, each process writes its output to files there, not pipes
    (a server under load may fill a pipe nobody reads yet)."""

    def __init__(self, model_path: str, port: int, logs: Optional[Path] = None) -> None:
        self.model_path = model_path
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.procs: List[subprocess.Popen[str]] = []

    def spawn(self, **overrides: str) -> subprocess.Popen[str]:
        env = api_env(MODEL_PATH=self.model_path, PORT=str(self.port), **overrides)
        proc = procs.spawn(["api.py"], env, logs=self._next_logs())
        self.procs.append(proc)
        return proc

    def _next_logs(self) -> Optional[Path]:
        if self.logs is None:
            return None
        folder = self.logs / f"server-{len(self.procs)}"
        folder.mkdir()
        return folder

    def stderr(self, proc: subprocess.Popen[str]) -> str:
        assert self.logs is not None, "stderr is a pipe: read it from the process"
        return (self.logs / f"server-{self.procs.index(proc)}" / "stderr.log").read_text()

    def stop_leftovers(self) -> None:
        for proc in self.procs:
            stop(proc)


async def wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    try:
        await asyncio.to_thread(procs.wait_ready, proc, f"{base}/readyz")
    except RuntimeError as exc:
        pytest.fail(str(exc))


async def wait_listeners(proc: subprocess.Popen[str], port: int, count: int) -> None:
    """Until `count` workers listen (each binds its own socket, SO_REUSEPORT): /readyz
    answers as soon as the *first* one does, and connections opened before the others
    bind all stay with that one."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see each worker's listener")
    if count > 1:
        await wait_children(proc, count)
    try:
        await asyncio.to_thread(procs.wait_all_listening, proc, port)
    except RuntimeError as exc:
        pytest.fail(str(exc))


async def wait_exit(proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while proc.poll() is None:
        assert time.monotonic() < deadline, "server did not exit"
        await asyncio.sleep(0.05)
    return proc.returncode


def spawned_workers(proc: subprocess.Popen[str]) -> List[int]:
    """The supervisor's worker processes so far (not multiprocessing's resource tracker)."""
    if not Path(f"/proc/{proc.pid}/task/{proc.pid}/children").exists():
        pytest.skip("needs Linux /proc/<pid>/task/<pid>/children to find the workers")
    return procs.worker_pids(proc.pid)


def worker_pids(proc: subprocess.Popen[str]) -> List[int]:
    pids = spawned_workers(proc)
    assert len(pids) == 2, pids
    return pids


async def wait_children(proc: subprocess.Popen[str], count: int) -> None:
    """Until the supervisor has started `count` workers (started, not yet ready)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while len(spawned_workers(proc)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "workers not started in time"
        await asyncio.sleep(0.005)


def log_records(stderr: str) -> List[Dict[str, Any]]:
    """The JSON log lines of a server's stderr; fails the test on a line that is not one."""
    records = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records
