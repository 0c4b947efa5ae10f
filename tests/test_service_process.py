"""`python api.py` as a real process: start-up failures, graceful shutdown, worker death."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

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


def test_an_unusable_metrics_directory_stops_startup(model_path: str, tmp_path: Path, free_port: int) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    env = api_env(
        MODEL_PATH=model_path, PORT=str(free_port), WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(taken)
    )
    result = run_api(env)
    assert result.returncode == 3
    assert_one_line_error(result, str(taken))


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
    launcher: Launcher, workers: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    proc = launcher.spawn(
        WORKERS=workers, DRAIN_SECONDS="0", LOG_LEVEL="INFO", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    await wait_ready(proc, launcher.base)
    await wait_listeners(proc, launcher.port, int(workers))
    # Several workers share their metrics there; one needs no file (the variable is ignored).
    assert metrics_dir.is_dir() == (workers == "2")
    await asyncio.sleep(0.2)  # the supervisor logs once every worker has said it is ready
    proc.send_signal(signal.SIGTERM)
    await wait_exit(proc)
    assert not metrics_dir.exists()  # created by the service, removed at exit
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


# --- Metrics across workers ---------------------------------------------------------------

CATEGORIZE_200 = ("categorizer_http_requests_total", {"route": "/v1/categorize", "status": "200"})
SCRAPES = ("categorizer_http_requests_total", {"route": "/metrics", "status": "200"})


def samples(text: str, name: str) -> List[Tuple[Dict[str, str], float]]:
    """(labels, value) of each sample called `name` in a Prometheus text page."""
    return [
        (found.labels, float(found.value))
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    ]


def sample(text: str, name: str, labels: Dict[str, str]) -> float:
    return sum(value for found, value in samples(text, name) if found == labels)


def per_worker(metrics_dir: Path, name: str, labels: Dict[str, str]) -> List[float]:
    """A counter sample's value in each worker's own file."""
    values = []
    for file in sorted(metrics_dir.glob("counter_*.db")):
        found = [s for f in MultiProcessCollector.merge([str(file)]) for s in f.samples if s.name == name]  # type: ignore[no-untyped-call]
        values.append(sum(s.value for s in found if s.labels == labels))
    return values


async def scrape(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(f"{base}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_every_scrape_counts_every_worker(launcher: Launcher, tmp_path: Path) -> None:
    # Issue 14: after 300 requests, eight scrapes said 153 or 151, whichever worker answered.
    proc = launcher.spawn(WORKERS="2", DRAIN_SECONDS="0", TMPDIR=str(tmp_path))
    await wait_ready(proc, launcher.base)
    await wait_listeners(proc, launcher.port, 2)
    [metrics_dir] = tmp_path.glob("categorizer-metrics-*")  # the service's own, in TMPDIR
    sent = 300
    body = {"products": [{"title": "Caneca personalizada"}]}
    # A connection per request, so that the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(sent // 20):
            posts = [session.post(f"{launcher.base}/v1/categorize", json=body) for _ in range(20)]
            for response in await asyncio.gather(*posts):
                assert response.status == 200
                response.release()
        scrapes: List[str] = []
        # The eight scrapes, and more until each worker has answered two of them.
        while len(scrapes) < 8 or min(per_worker(metrics_dir, *SCRAPES)) < 2:
            assert len(scrapes) < 60, "one worker answered every scrape"
            scrapes.append(await scrape(session, launcher.base))
    served = per_worker(metrics_dir, *CATEGORIZE_200)
    assert len(served) == 2, served
    assert min(served) > 0, served  # both workers served requests
    for text in scrapes:
        assert sample(text, *CATEGORIZE_200) == sent
        assert sample(text, "categorizer_products_per_request_count", {}) == sent
        assert sum(value for _, value in samples(text, "categorizer_predictions_total")) == sent
        assert sum(value for _, value in samples(text, "categorizer_top_probability_count")) == sent
        # A gauge is one series for the service, not one per worker.
        assert [labels for labels, _ in samples(text, "categorizer_pending_requests")] == [{}]
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc) == 0
    assert not metrics_dir.exists()


async def test_a_metrics_directory_is_emptied_at_start_and_at_exit(
    launcher: Launcher, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's file, as if a worker had answered 1,000 requests; and another file.
    stale = MmapedDict(str(metrics_dir / "counter_99999.db"))  # type: ignore[no-untyped-call]
    name, labels = CATEGORIZE_200
    key = mmap_key(
        name[: -len("_total")],
        name,
        list(labels),
        list(labels.values()),
        "HTTP requests by route and status.",
    )
    stale.write_value(key, 1000.0, 0.0)  # type: ignore[no-untyped-call]
    stale.close()  # type: ignore[no-untyped-call]
    (metrics_dir / "notes.txt").write_text("not the service's")
    proc = launcher.spawn(WORKERS="2", DRAIN_SECONDS="0", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    await wait_ready(proc, launcher.base)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(f"{launcher.base}/v1/categorize", json={"products": []}) as response:
                assert response.status == 200
        assert sample(await scrape(session, launcher.base), *CATEGORIZE_200) == 3
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc) == 0
    assert [p.name for p in metrics_dir.iterdir()] == ["notes.txt"]  # the directory was the operator's


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


async def _post_one(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{url}/v1/categorize", json={"products": [{"title": "Caneca"}]})
        return response.status


@pytest.mark.parametrize("level", ["INFO", "ERROR"])
async def test_a_request_aiohttp_cannot_parse_is_one_warning_without_traceback(
    launcher: Launcher, level: str
) -> None:
    # aiohttp logged it as an ERROR with its traceback, as it logs a bug in the server.
    proc = launcher.spawn(WORKERS="1", DRAIN_SECONDS="0", LOG_LEVEL=level)
    await wait_ready(proc, launcher.base)
    reader, writer = await asyncio.open_connection("127.0.0.1", launcher.port)
    writer.write(b"POST /v1/categorize HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), status
    assert await _post_one(launcher.base) == 200  # and the worker serves on
    proc.send_signal(signal.SIGTERM)
    await wait_exit(proc)
    _, stderr = proc.communicate()
    records = log_records(stderr)
    assert not [r for r in records if r["level"] == "ERROR"], stderr
    refused = [r for r in records if r["message"] == "malformed request refused"]
    if level == "ERROR":  # a WARNING is below it
        assert refused == [], stderr
        return
    assert len(refused) == 1, stderr
    assert refused[0]["level"] == "WARNING"
    assert refused[0]["logger"] == "aiohttp.server"
    assert "Content-Length" in refused[0]["reason"]
    assert "traceback" not in refused[0]
