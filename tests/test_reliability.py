"""Soak and fault tests against a real `python api.py` (two workers, loopback only).

Each test is bounded in time (a few seconds of traffic) and stops its server. They add
to tests/test_service_process.py: sustained load with flat worker memory, misbehaving
clients next to well-behaved ones, fresh connections during the drain, and what the
load balancer sees when a worker dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import aiohttp
import pytest

from bench.procs import rss_bytes
from service.scheduler import INLINE_MAX_CHARS
from tests.servers import (
    STOP_TIMEOUT_SECONDS,
    Launcher,
    log_records,
    wait_exit,
    wait_listeners,
    wait_ready,
    worker_pids,
)

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "8"))
SOAK_CONCURRENCY = 64
# Worker memory may settle after warm-up (allocator pools, the model's arena), then
# must stay flat: growth from second 2 to the end within the larger of these (the
# text-heavy test below is the sharper leak detector).
RSS_GROWTH_BYTES = 15 * 1024 * 1024
RSS_GROWTH_FRACTION = 0.10
# Sanity bounds only: a loaded, shared 2-core machine is slow, a stuck server is slower.
MAX_LATENCY_SECONDS = 5.0
# Text-heavy requests (~40 KB of title and tags each), in windows after a warm-up, and
# the growth (all workers together) a window may show: kept request text would be
# about 100 x 40 KB = 4 MB per window; measured without a leak, windows other than
# a one-off step stay under 2 MiB here. The allocators grow in steps (2-47 MiB) over
# the first thousand or more of these requests with the four-head model of issue 13,
# about every other window (four probes of ten windows after the warm-up), so one
# window of eight must stay flat: four windows all stepped in about a third of runs,
# and a leak grows in every one.
LEAK_WARM_UP = 200
LEAK_WINDOWS = 8
LEAK_WINDOW_REQUESTS = 100
LEAK_MAX_SECONDS = 20.0
LEAK_GROWTH_BYTES = 2560 * 1024
MEDIAN_LATENCY_SECONDS = 0.5
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)

PATH = "/v1/categorize"
TITLES = [
    "Caneca personalizada de porcelana",
    "Kit lembrancinha maternidade",
    "Convite de casamento rústico",
    "Quadro decorativo para sala",
    "Body bebê bordado com nome",
    "Topo de bolo aniversário",
]


def product(i: int, title_chars: int = 0) -> Dict[str, str]:
    title = TITLES[i % len(TITLES)]
    if title_chars:
        title = (title + " ") * (title_chars // (len(title) + 1) + 1)
        title = title[:title_chars].strip()
    return {"title": title, "concatenated_tags": "presente festa"}


def body_of(products: List[Dict[str, str]]) -> bytes:
    return json.dumps({"products": products}).encode()


# (body, expected status, products): small batches run on the event loop, the big one
# (twice service.scheduler.INLINE_MAX_CHARS) on the model thread; one invalid body.
SOAK_MIX: List[Tuple[bytes, int, int]] = [
    (body_of([product(0)]), 200, 1),
    (body_of([product(i) for i in range(5)]), 200, 5),
    (body_of([product(i, 2 * INLINE_MAX_CHARS // 20) for i in range(20)]), 200, 20),
    (b'{"products": [{"title": "   "}]}', 400, 0),
    (body_of([product(3)]), 200, 1),
]
ONE = body_of([product(0)])


@pytest.fixture
def launcher(model_path: str, free_port: int, tmp_path: Path) -> Iterator[Launcher]:
    launch = Launcher(model_path, free_port, tmp_path)
    yield launch
    launch.stop_leftovers()


async def start(launcher: Launcher, **overrides: str) -> subprocess.Popen[str]:
    # No drain unless a test asks for one: stopping leftovers should be quick.
    env = {"WORKERS": "2", "DRAIN_SECONDS": "0", "GRACE_SECONDS": "2", **overrides}
    proc = launcher.spawn(**env)
    await wait_ready(proc, launcher.base)
    await wait_listeners(proc, launcher.port, int(env["WORKERS"]))
    return proc


def cpu_ticks(pid: int) -> int:
    # Fields after the parenthesised command name; utime and stime are 14th and 15th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> Tuple[int, bytes]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.read()


def check_categories(status: int, payload: bytes, products: int) -> Optional[str]:
    """None if a 200 carries one category per product; else what is wrong."""
    if status != 200:
        return f"status {status}: {payload[:200]!r}"
    try:
        categories = json.loads(payload)["categories"]
    except (ValueError, KeyError, TypeError):
        return f"incomplete or invalid body: {payload[:200]!r}"
    if len(categories) != products or not all(isinstance(c, str) and c for c in categories):
        return f"expected {products} categories, got {categories!r}"
    return None


# --- Soak ----------------------------------------------------------------------------------


async def test_soak_no_errors_and_flat_worker_memory(launcher: Launcher) -> None:
    proc = await start(launcher)
    workers = worker_pids(proc)
    cpu_before = {pid: cpu_ticks(pid) for pid in workers}
    url = launcher.base + PATH
    outcomes: Counter[str] = Counter()
    errors: List[str] = []
    deadline = time.monotonic() + SOAK_SECONDS

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            body, expected, products = SOAK_MIX[n % len(SOAK_MIX)]
            n += 1
            try:
                status, payload = await post(session, url, body)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            outcomes[str(status)] += 1
            if expected == 200:
                problem = check_categories(status, payload, products)
                if problem:
                    errors.append(problem)
            elif status != expected:
                errors.append(f"expected {expected}, got {status}: {payload[:200]!r}")

    connector = aiohttp.TCPConnector(limit=SOAK_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        clients = [asyncio.ensure_future(client(n, session)) for n in range(SOAK_CONCURRENCY)]
        await asyncio.sleep(min(2.0, SOAK_SECONDS / 4))  # warm-up
        samples: Dict[int, List[int]] = {pid: [] for pid in workers}
        while time.monotonic() < deadline:
            for pid in workers:
                samples[pid].append(rss_bytes(pid))
            await asyncio.sleep(0.5)
        await asyncio.gather(*clients)
    for pid in workers:
        samples[pid].append(rss_bytes(pid))

    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    total = sum(outcomes.values())
    assert outcomes["400"] > 0
    # Sanity: the load was real (a few hundred requests/s even on a busy machine).
    assert total >= 50 * SOAK_SECONDS, outcomes
    assert proc.poll() is None
    assert worker_pids(proc) == workers, "a worker was replaced during the soak"
    # SO_REUSEPORT spread the connections: both workers did work.
    for pid in workers:
        assert cpu_ticks(pid) > cpu_before[pid], f"worker {pid} got no traffic"
    for pid in workers:
        rss = samples[pid]
        # A leak grows in every interval; an allocator's one-off step (a new arena, a
        # raised mmap threshold) in one: that single largest step is not counted.
        step = max([0] + [b - a for a, b in zip(rss, rss[1:])])
        growth = rss[-1] - rss[0] - step
        allowed = max(RSS_GROWTH_BYTES, RSS_GROWTH_FRACTION * rss[0])
        assert growth <= allowed, (
            f"worker {pid} RSS grew {growth / 2**20:.1f} MiB after warm-up, besides a step of "
            f"{step / 2**20:.1f} MiB ({rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB, {total} requests)"
        )


def text_heavy_body(n: int) -> bytes:
    """Eight products at the title and near the tags limits, different on every call."""
    products = []
    for i in range(8):
        words = [f"{TITLES[(n + i) % len(TITLES)]} {n}-{i}-{k}" for k in range(150)]
        products.append({"title": " ".join(words)[:1000], "concatenated_tags": " ".join(words * 3)[:4000]})
    return body_of(products)


async def test_worker_memory_flat_under_text_heavy_load(launcher: Launcher) -> None:
    """Request text must be freed after each request: ~40 KB of it per request here, so a
    server that kept it would grow by MiBs in every window of LEAK_WINDOW_REQUESTS."""
    proc = await start(launcher)
    workers = worker_pids(proc)
    url = launcher.base + PATH
    errors: List[str] = []
    sent = 0

    async def client(session: aiohttp.ClientSession, quota: int, deadline: float) -> None:
        nonlocal sent
        while sent < quota and time.monotonic() < deadline:
            sent += 1
            try:
                status, payload = await post(session, url, text_heavy_body(sent))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            problem = check_categories(status, payload, 8)
            if problem:
                errors.append(problem)

    async def send(quota: int) -> None:
        deadline = time.monotonic() + LEAK_MAX_SECONDS
        await asyncio.gather(*(client(session, sent + quota, deadline) for _ in range(8)))

    growths = []
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await send(LEAK_WARM_UP)  # the model's and the allocator's buffers settle
        for _ in range(LEAK_WINDOWS):
            before = sum(rss_bytes(pid) for pid in workers)
            await send(LEAK_WINDOW_REQUESTS)
            growths.append(sum(rss_bytes(pid) for pid in workers) - before)

    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    assert sent >= LEAK_WARM_UP + LEAK_WINDOWS * LEAK_WINDOW_REQUESTS, f"only {sent} requests"
    # A leak grows in every window; an allocator settling (a new arena, a raised mmap
    # threshold) is a one-off step in one window. So: no growth in at least one window.
    assert min(growths) <= LEAK_GROWTH_BYTES, (
        f"workers' RSS grew in every window of {LEAK_WINDOW_REQUESTS} text-heavy requests: "
        + ", ".join(f"{g / 2**20:.1f} MiB" for g in growths)
    )


# --- Misbehaving clients -------------------------------------------------------------------


def request_head(port: int, content_length: int) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


async def read_status(reader: asyncio.StreamReader) -> Tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def close(writer: asyncio.StreamWriter, abort: bool = False) -> None:
    if abort:
        writer.transport.abort()  # RST-like: no FIN handshake, buffered data dropped
    else:
        writer.close()
    with contextlib.suppress(ConnectionError, OSError):  # the peer reset it: closed all the same
        await writer.wait_closed()


async def slow_client(port: int, seconds: float) -> Tuple[int, bytes]:
    """Headers at once, then the body a few bytes at a time over `seconds`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(port, len(ONE)))
        await writer.drain()
        pieces = [ONE[i : i + 4] for i in range(0, len(ONE), 4)]
        for piece in pieces:
            await asyncio.sleep(seconds / len(pieces))
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(read_status(reader), 10)
    finally:
        await close(writer)


async def abort_mid_body(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(port, len(ONE)) + ONE[: len(ONE) // 2])
    await writer.drain()
    await asyncio.sleep(0.02)
    await close(writer, abort=True)


async def half_sent_body(port: int) -> bytes:
    """Content-Length promises more than is sent; then the client stops sending."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(port, 10_000) + ONE)
        await writer.drain()
        writer.write_eof()
        # Nothing can be answered to an incomplete body: the server must just close.
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        await close(writer)


async def abort_before_response(port: int) -> None:
    """A full request for the model thread, then gone before the answer."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    body = SOAK_MIX[2][0]
    writer.write(request_head(port, len(body)) + body)
    await writer.drain()
    await close(writer, abort=True)


async def not_http(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n")  # a TLS hello, say
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        await close(writer)


async def test_misbehaving_clients_do_not_hurt_others(launcher: Launcher) -> None:
    proc = await start(launcher)
    workers = worker_pids(proc)
    port = launcher.port
    url = launcher.base + PATH
    seconds = 4.0
    deadline = time.monotonic() + seconds
    latencies: List[float] = []
    errors: List[str] = []
    garbage_answers: List[bytes] = []
    half_answers: List[bytes] = []

    async def good_client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                status, payload = await post(session, url, ONE)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            latencies.append(time.monotonic() - began)
            problem = check_categories(status, payload, 1)
            if problem:
                errors.append(problem)

    async def repeat(attack: str) -> None:
        while time.monotonic() < deadline:
            if attack == "abort":
                await abort_mid_body(port)
            elif attack == "half":
                half_answers.append(await half_sent_body(port))
            elif attack == "gone":
                await abort_before_response(port)
            else:
                garbage_answers.append(await not_http(port))
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        good = [asyncio.ensure_future(good_client(session)) for _ in range(8)]
        slow = [asyncio.ensure_future(slow_client(port, seconds - 1)) for _ in range(16)]
        bad = [
            asyncio.ensure_future(repeat(a)) for a in ("abort", "abort", "half", "half", "gone", "garbage")
        ]
        slow_results = await asyncio.gather(*slow)
        await asyncio.gather(*good, *bad)
        # Still ready, same workers: nothing crashed or was replaced.
        async with session.get(launcher.base + "/readyz") as response:
            assert response.status == 200

    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    assert len(latencies) >= 50, "the well-behaved clients barely got through"
    assert max(latencies) < MAX_LATENCY_SECONDS
    assert statistics.median(latencies) < MEDIAN_LATENCY_SECONDS
    # Slow clients are served too once their body is complete.
    for status, payload in slow_results:
        assert check_categories(status, payload, 1) is None
    assert half_answers
    assert all(answer == b"" for answer in half_answers), half_answers[:3]
    assert garbage_answers
    assert all(re.match(rb"HTTP/1\.[01] 400 ", answer) for answer in garbage_answers), garbage_answers[:3]
    assert proc.poll() is None
    assert worker_pids(proc) == workers


async def test_aborted_upload_is_not_a_server_error(launcher: Launcher) -> None:
    proc = await start(launcher, WORKERS="1", LOG_LEVEL="ERROR")
    for _ in range(3):
        await abort_mid_body(launcher.port)
    await asyncio.sleep(0.3)
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        session.get(launcher.base + "/metrics") as response,
    ):
        metrics = await response.text()
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc) == 0
    stderr = launcher.stderr(proc)
    assert 'status="500"' not in metrics
    assert "unhandled error" not in stderr


# --- Shutdown and worker death -------------------------------------------------------------


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


async def test_sigterm_fresh_connections_during_drain_all_complete(launcher: Launcher) -> None:
    """Clients that open a new connection per request after SIGTERM, for part of the drain,
    and an upload still arriving when the drain ends: every one gets a complete 200."""
    drain, grace = 3.0, 3.0
    proc = await start(launcher, DRAIN_SECONDS=str(drain), GRACE_SECONDS=str(grace))
    url = launcher.base + PATH
    results: List[Optional[str]] = []
    closes: Counter[str] = Counter()
    sending = asyncio.Event()
    sending.set()

    async def sender(session: aiohttp.ClientSession, n: int) -> None:
        while sending.is_set():
            body, _, products = SOAK_MIX[n % 3]  # the valid ones
            n += 1
            try:
                async with session.post(url, data=body) as response:
                    payload = await response.read()
                    results.append(check_categories(response.status, payload, products))
                    closes[response.headers.get("Connection", "").lower()] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                results.append(repr(exc))

    # force_close: a new TCP connection for every request, as after a balancer's retry.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        senders = [asyncio.ensure_future(sender(session, n)) for n in range(8)]
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Starts well inside the drain, finishes its body after the drain, within the grace.
        straddling = asyncio.ensure_future(slow_client(launcher.port, drain * 0.5 + 1.0))
        await asyncio.sleep(drain * 0.5)
        async with session.get(launcher.base + "/readyz") as response:
            assert response.status == 503
        await asyncio.sleep(drain * 0.6 - drain * 0.5)
        sending.clear()
        await asyncio.gather(*senders)
        slow_status, slow_payload = await straddling

    code = await wait_exit(proc)
    stopped = time.monotonic() - signalled
    stderr = launcher.stderr(proc)
    failures = [r for r in results if r is not None]
    assert failures == [], f"{len(failures)} of {len(results)} failed, first: {failures[:5]}"
    assert len(results) >= 20
    assert closes["close"] > 0  # draining responses ask clients to reconnect
    assert check_categories(slow_status, slow_payload, 1) is None
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert drain <= stopped < drain + grace + 5.0
    assert refuses_connections(launcher.port)


async def test_killed_worker_turns_readiness_off_and_survivor_drains(launcher: Launcher) -> None:
    """After SIGKILL of one worker the service reports itself unready at once, the other
    worker keeps answering during the drain, then the parent exits 1 for a restart."""
    drain, grace = 2.0, 2.0
    proc = await start(launcher, DRAIN_SECONDS=str(drain), GRACE_SECONDS=str(grace))
    victim, survivor = worker_pids(proc)
    url = launcher.base + PATH
    after_kill: List[Tuple[float, str]] = []  # (time, "200" / other status / error)
    killed_at = 0.0
    sending = asyncio.Event()
    sending.set()

    async def sender(session: aiohttp.ClientSession) -> None:
        while sending.is_set():
            try:
                status, payload = await post(session, url, ONE)
                outcome = "200" if check_categories(status, payload, 1) is None else f"{status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome = type(exc).__name__
            if killed_at:
                after_kill.append((time.monotonic() - killed_at, outcome))

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        senders = [asyncio.ensure_future(sender(session)) for _ in range(4)]
        await asyncio.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        unready_after = None
        while unready_after is None and time.monotonic() - killed_at < drain:
            try:
                async with session.get(launcher.base + "/readyz") as response:
                    if response.status == 503:
                        unready_after = time.monotonic() - killed_at
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)
        await asyncio.sleep(drain * 0.5)
        sending.clear()
        await asyncio.gather(*senders)

    code = await wait_exit(proc)
    exited_after = time.monotonic() - killed_at
    stderr = launcher.stderr(proc)
    assert unready_after is not None, "/readyz never reported 503 after a worker died"
    # The survivor answered during the drain, and never with a server error.
    statuses = Counter(outcome for _, outcome in after_kill)
    assert statuses["200"] > 0, statuses
    assert not [o for o in statuses if o.isdigit() and o != "200"], statuses
    # Only requests caught on the killed worker may have failed, and only right after the kill.
    late_failures = [(t, o) for t, o in after_kill if o != "200" and t > unready_after + 0.5]
    assert late_failures == [], late_failures[:5]
    assert code == 1
    died = [r for r in log_records(stderr) if r["message"] == "worker exited unexpectedly"]
    assert [r["pid"] for r in died] == [victim]
    assert "Traceback" not in stderr
    assert exited_after < drain + grace + STOP_TIMEOUT_SECONDS
    assert not Path(f"/proc/{survivor}").exists(), "the surviving worker outlived its parent"
