"""Running `python api.py` as a real process, for the process-level tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import aiohttp
import pytest

from bench.procs import listening_inodes
from tests.datasets import ROOT

# Generous: only bounds how long a broken server can hang the test run.
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def unused_port() -> int:
    """A local TCP port nothing listens on now (the OS may hand it out again later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def api_env(**overrides: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORKERS", "PORT", "MODEL_PATH")}
    env.update(HOST="127.0.0.1", LOG_LEVEL="WARNING")
    env.update(overrides)
    return env


class Launcher:
    """Starts `python api.py` processes and stops any left running by a failed test."""

    def __init__(self, model_path: str, port: int) -> None:
        self.model_path = model_path
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: List[subprocess.Popen[str]] = []

    def spawn(self, **overrides: str) -> subprocess.Popen[str]:
        env = api_env(MODEL_PATH=self.model_path, PORT=str(self.port), **overrides)
        proc = subprocess.Popen(
            [sys.executable, "api.py"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop_leftovers(self) -> None:
        for proc in self.procs:
            stop(proc)
            for pipe in (proc.stdout, proc.stderr):  # unread pipes would warn when collected
                if pipe is not None:
                    pipe.close()


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the parent forwards it to its workers), SIGKILL if it will not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FileLauncher(Launcher):
    """Launcher whose servers write stdout/stderr to files, not pipes: under load a
    server may log more than a pipe holds (64 KiB) before the test reads it, and a
    worker blocked on a full pipe would stall the very traffic under test."""

    def __init__(self, model_path: str, port: int, logs: Path) -> None:
        super().__init__(model_path, port)
        self.logs = logs

    def spawn(self, **overrides: str) -> subprocess.Popen[str]:
        env = api_env(MODEL_PATH=self.model_path, PORT=str(self.port), **overrides)
        n = len(self.procs)
        with (
            (self.logs / f"stdout-{n}.log").open("w") as out,
            (self.logs / f"stderr-{n}.log").open("w") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "api.py"], cwd=ROOT, env=env, stdout=out, stderr=err, text=True
            )
        self.procs.append(proc)
        return proc

    def stderr(self, proc: subprocess.Popen[str]) -> str:
        return (self.logs / f"stderr-{self.procs.index(proc)}.log").read_text()


async def wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    pytest.fail("server not ready in time")


async def wait_listeners(proc: subprocess.Popen[str], port: int, count: int) -> None:
    """Until `count` workers listen (each binds its own socket, SO_REUSEPORT): /readyz
    answers as soon as the *first* one does, and connections opened before the others
    bind all stay with that one."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see each worker's listener")
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while len(listening_inodes(port)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{len(listening_inodes(port))} of {count} workers listening"
        await asyncio.sleep(0.05)


async def wait_exit(proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while proc.poll() is None:
        assert time.monotonic() < deadline, "server did not exit"
        await asyncio.sleep(0.05)
    return proc.returncode


def spawned_workers(proc: subprocess.Popen[str]) -> List[int]:
    """The supervisor's worker processes so far (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if not children.exists():
        pytest.skip("needs Linux /proc/<pid>/task/<pid>/children to find the workers")
    pids = []
    for pid in children.read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except FileNotFoundError:  # a child that exited since the listing
            continue
    return pids


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
