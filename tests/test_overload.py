"""Past saturation, against a real two-worker `python api.py` (loopback only, a few
seconds of traffic each): every request is answered, 200 or 503 with Retry-After;
liveness keeps answering; memory stays bounded whatever the queue; and SIGTERM right
after a burst is a clean stop. Issue 12's full-size scenario is `python -m bench.overload`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import aiohttp
import pytest

from bench import load, overload, procs
from tests.datasets import ROOT
from tests.servers import Launcher, wait_listeners, wait_ready

# Bodies of ~2 MB (5,000 products, titles of 380 characters), a budget of one such body
# per worker: the other clients are refused, not queued. Kept without admission, each
# waiting body would cost its worker ~5 MB (bytes, then decoded strings): 48 clients,
# ~240 MB; admitted, ~10 MB per worker.
CLIENTS = 48
PRODUCTS = 5_000
TITLE_CHARS = 380
BURST_SECONDS = 4.0
SETTINGS = {
    "WORKERS": "2",
    "MAX_PENDING_BYTES": str(2 * 1024 * 1024),
    "MAX_QUEUE_SECONDS": "3",
    "DRAIN_SECONDS": "1",
    "GRACE_SECONDS": "5",
    "LOG_LEVEL": "INFO",
}
# Growth of the whole process tree over idle during the burst: the model's buffers for
# one sub-batch of long titles (~60 MB a worker, allocated once) plus the admitted work.
MAX_GROWTH_MB = 200
# The goal is 200 ms (bench.overload measures it); with ~40 probes the p99 is the
# slowest one, so this only catches a loop that stalls for whole seconds, on a shared CI
# machine that also runs the load generator.
MAX_PROBE_P99_SECONDS = 2.0
STOP_SLACK_SECONDS = 3.0

# aiohttp's client warns that writing a body of more than 1 MiB at once blocks its loop for
# a moment: true, and harmless for a load generator, whose bodies must keep a Content-Length.
pytestmark = pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")


@pytest.fixture
def launcher(model_path: str, free_port: int, tmp_path: Path) -> Iterator[Launcher]:
    launch = Launcher(model_path, free_port, tmp_path)
    yield launch
    launch.stop_leftovers()


async def start(launcher: Launcher) -> subprocess.Popen[str]:
    proc = launcher.spawn(**SETTINGS)
    await wait_ready(proc, launcher.base)
    await wait_listeners(proc, launcher.port, 2)
    return proc


async def burst(launcher: Launcher, seconds: float = BURST_SECONDS) -> Dict[str, Any]:
    url = f"{launcher.base}/v1/categorize"
    return await load.run(url, PRODUCTS, CLIENTS, seconds, 30.0, False, TITLE_CHARS, "/healthz")


def mb(nbytes: int) -> float:
    return nbytes / 2**20


async def test_a_burst_is_answered_200_or_503_with_bounded_memory_and_live_health(
    launcher: Launcher,
) -> None:
    proc = await start(launcher)
    idle = procs.tree_rss_bytes(proc.pid)
    with procs.PeakRss(proc.pid) as rss:
        summary = await burst(launcher)
    assert summary["failures"] == {}, load.report(summary)
    assert summary["ok"] > 0, load.report(summary)
    assert summary["refused_503"] > 0, "nothing refused: the test did not overload the server"
    assert min(summary["retry_after_s"]) >= 1
    probe = summary["probe"]
    assert probe["failures"] == {}
    assert probe["count"] >= BURST_SECONDS / 0.5
    assert probe["p99_ms"] <= 1000 * MAX_PROBE_P99_SECONDS, load.report(summary)
    growth = mb(rss.peak - idle)
    assert growth <= MAX_GROWTH_MB, f"tree RSS grew by {growth:.0f} MB over {mb(idle):.0f} MB idle"


async def test_a_refusal_is_a_problem_with_retry_after(launcher: Launcher) -> None:
    await start(launcher)
    body = json.dumps({"products": [{"title": "x" * TITLE_CHARS}] * PRODUCTS}).encode()
    url = f"{launcher.base}/v1/categorize"
    statuses = await asyncio.gather(*(_post(url, body) for _ in range(12)))
    refused = [(headers, payload) for status, headers, payload in statuses if status == 503]
    assert refused, [status for status, _, _ in statuses]
    for headers, payload in refused:
        assert headers["Content-Type"] == "application/problem+json"
        assert int(headers["Retry-After"]) >= 1
        problem = json.loads(payload)
        assert problem["status"] == 503
        assert "retry after" in problem["detail"]
    assert {status for status, _, _ in statuses} <= {200, 503}


async def _post(url: str, body: bytes) -> Any:
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        return response.status, dict(response.headers), await response.read()


async def test_sigterm_right_after_a_burst_answers_everyone_and_exits_cleanly(launcher: Launcher) -> None:
    proc = await start(launcher)
    running = asyncio.ensure_future(burst(launcher, 3.0))
    await asyncio.sleep(3.0)  # the clients stop sending now; many answers are still due
    signalled = time.monotonic()
    proc.terminate()
    summary = await running
    answered = time.monotonic() - signalled
    code = await asyncio.to_thread(proc.wait, 60)
    took = time.monotonic() - signalled
    assert summary["failures"] == {}, load.report(summary)
    deadline = float(SETTINGS["DRAIN_SECONDS"]) + float(SETTINGS["GRACE_SECONDS"]) + STOP_SLACK_SECONDS
    assert code == 0
    assert took <= deadline, f"exit after {took:.1f} s"
    assert answered <= deadline
    stderr = launcher.stderr(proc)
    noisy = overload.other_stderr_lines(stderr)
    assert len(noisy) <= 10, stderr[-2000:]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_gives_freed_heap_memory_back() -> None:
    # In a process of its own, so that the test run's heap does not blur the numbers:
    # 200 MB of heap blocks freed below one still in use, which free() cannot give back.
    script = (
        "import os; from bench.procs import rss_bytes; from service import memory;"
        "junk = [bytes(4000) for _ in range(50_000)]; kept = bytes(4000);"
        "del junk; before = rss_bytes(os.getpid()); memory.trim();"
        "print(before, rss_bytes(os.getpid()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    before, after = map(int, result.stdout.split())
    assert before - after >= 50 * 2**20, f"trim gave back {mb(before - after):.0f} MB of {mb(before):.0f}"
