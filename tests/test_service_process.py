"""`python api.py` as a real process: start-up failures, graceful shutdown, worker death."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import aiohttp
import pytest

from bench import procs
from runtime.identity import model_version
from tests.datasets import ROOT
from tests.servers import (
    STOP_TIMEOUT_SECONDS,
    Launcher,
    api_env,
    log_records,
    wait_children,
    wait_exit,
    wait_listeners,
    wait_ready,
    worker_pids,
)

# Early in start-up: the interpreter is still importing, the model not loaded yet.
START_SIGNAL_DELAY_SECONDS = 0.2


def run_api(env: Dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "api.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_SECONDS,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_missing_model_stops_startup(tmp_path: Path, free_port: int, workers: str) -> None:
    missing = tmp_path / "nope.onnx"
    result = run_api(api_env(MODEL_PATH=str(missing), PORT=str(free_port), WORKERS=workers))
    assert_one_line_error(result, str(missing))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_model_stops_startup(tmp_path: Path, free_port: int, workers: str) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 100)
    result = run_api(api_env(MODEL_PATH=str(corrupt), PORT=str(free_port), WORKERS=workers))
    assert_one_line_error(result, str(corrupt))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("WORKERS", "0"),
        ("MAX_PRODUCTS", "-1"),
        ("ACCESS_LOG", "sometimes"),
        ("LOG_LEVEL", "LOUD"),
        ("DRAIN_SECONDS", "nan"),
    ],
)
def test_bad_setting_stops_startup(model_path: str, name: str, value: str) -> None:
    result = run_api(api_env(MODEL_PATH=model_path, **{name: value}))
    assert result.returncode == 2
    assert_one_line_error(result, name, value)


def test_port_in_use_stops_startup(model_path: str) -> None:
    import socket

    with socket.socket() as taken:  # no SO_REUSEPORT: the service cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_api(api_env(MODEL_PATH=model_path, PORT=str(port), WORKERS="1"))
    assert_one_line_error(result, str(port))


# --- Running server ------------------------------------------------------------------------


@pytest.fixture
def launcher(model_path: str, free_port: int) -> Iterator[Launcher]:
    launch = Launcher(model_path, free_port)
    yield launch
    launch.stop_leftovers()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_instance_on_the_same_port_is_refused(launcher: Launcher, workers: str) -> None:
    # SO_REUSEPORT lets the workers of one service share the port; it would also let a
    # stale second instance join them silently and answer part of the traffic.
    first = launcher.spawn(WORKERS="2", DRAIN_SECONDS="0")
    await wait_ready(first, launcher.base)
    await wait_listeners(first, launcher.port, 2)
    env = api_env(MODEL_PATH=launcher.model_path, PORT=str(launcher.port), WORKERS=workers)
    second = await asyncio.to_thread(run_api, env)
    assert second.returncode == 3
    assert_one_line_error(second, str(launcher.port), "another server")
    assert first.poll() is None
    assert len(procs.listening_inodes(launcher.port)) == 2  # the first one's workers only


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_one_start_up_line_gives_the_url_the_workers_and_the_model(
    launcher: Launcher, workers: str
) -> None:
    proc = launcher.spawn(WORKERS=workers, DRAIN_SECONDS="0", LOG_LEVEL="INFO")
    await wait_ready(proc, launcher.base)
    await wait_listeners(proc, launcher.port, int(workers))
    await asyncio.sleep(0.2)  # the supervisor logs once every worker has said it is ready
    proc.send_signal(signal.SIGTERM)
    await wait_exit(proc)
    _, stderr = proc.communicate()
    serving = [r for r in log_records(stderr) if r["message"] == "serving"]
    assert len(serving) == 1, stderr
    assert serving[0]["url"] == launcher.base
    assert serving[0]["workers"] == int(workers)
    assert serving[0]["model_version"] == model_version(launcher.model_path)
    assert len(serving[0]["model_version"]) == 12


@pytest.mark.parametrize("workers", ["2", "1"])
async def test_sigterm_drains_without_losing_requests(launcher: Launcher, workers: str) -> None:
    proc = launcher.spawn(WORKERS=workers, DRAIN_SECONDS="1", GRACE_SECONDS="5")
    base = launcher.base
    await wait_ready(proc, base)

    statuses: List[int] = []
    saw_503 = asyncio.Event()
    body = {"products": [{"title": "Caneca personalizada", "concatenated_tags": "caneca"}]}

    async def sender(session: aiohttp.ClientSession) -> None:
        # Like a client behind a load balancer: keeps sending until the balancer has
        # seen /readyz fail, plus a few more requests sent during the drain.
        after = 0
        while after < 5:
            async with session.post(f"{base}/v1/categorize", json=body) as response:
                await response.read()
                statuses.append(response.status)
            after += saw_503.is_set()

    async def watcher(session: aiohttp.ClientSession) -> None:
        while not saw_503.is_set():
            async with session.get(f"{base}/readyz") as response:
                if response.status == 503:
                    saw_503.set()
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.ensure_future(sender(session)) for _ in range(8)]
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(watcher(session), timeout=STOP_TIMEOUT_SECONDS)
        await asyncio.gather(*senders)

    code = await wait_exit(proc)
    _, stderr = proc.communicate()
    assert saw_503.is_set()
    assert len(statuses) > 8 * 5
    assert set(statuses) == {200}
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_worker_death_stops_the_service_nonzero(launcher: Launcher) -> None:
    proc = launcher.spawn(WORKERS="2", DRAIN_SECONDS="0", GRACE_SECONDS="1")
    await wait_ready(proc, launcher.base)
    workers = worker_pids(proc)
    os.kill(workers[0], signal.SIGKILL)
    code = await wait_exit(proc)
    _, stderr = proc.communicate()
    assert code == 1
    died = [r for r in log_records(stderr) if r["message"] == "worker exited unexpectedly"]
    assert [(r["level"], r["pid"]) for r in died] == [("ERROR", workers[0])]
    assert "Traceback" not in stderr


async def test_a_worker_that_will_not_stop_is_killed_once(launcher: Launcher) -> None:
    # A stopped worker cannot take its SIGTERM: past drain + grace + the margin, the
    # supervisor kills it, says so once, and exits 1 (it used to repeat the kill, and
    # the line, on every pass of its loop until the worker was reaped).
    proc = launcher.spawn(WORKERS="2", DRAIN_SECONDS="0", GRACE_SECONDS="0")
    await wait_ready(proc, launcher.base)
    stuck, _ = worker_pids(proc)
    os.kill(stuck, signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    code = await wait_exit(proc)
    _, stderr = proc.communicate()
    assert code == 1
    killed = [r for r in log_records(stderr) if "did not stop in time" in r["message"]]
    assert len(killed) == 1, stderr
    assert killed[0]["pids"] == [stuck]
    assert procs.rss_bytes(stuck) == 0, "the stuck worker is still alive"  # gone, or a zombie


@pytest.mark.parametrize("workers", ["2", "1"])
async def test_sigterm_while_starting_is_a_clean_stop(launcher: Launcher, workers: str) -> None:
    # An orchestrator may stop a service that is still loading its model (a rollout
    # cancelled, a node drained): that is a graceful stop, not a crash.
    proc = launcher.spawn(WORKERS=workers, DRAIN_SECONDS="0", GRACE_SECONDS="1")
    if workers == "2":
        await wait_children(proc, 2)  # the workers exist but are still importing
    else:
        await asyncio.sleep(START_SIGNAL_DELAY_SECONDS)
    proc.send_signal(signal.SIGTERM)
    code = await wait_exit(proc)
    _, stderr = proc.communicate()
    assert code == 0, stderr
    assert "Traceback" not in stderr
