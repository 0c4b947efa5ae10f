"""A load generator for load testers: `python -m bench.load URL --titles N --concurrency C --duration S`.

Pure Python (aiohttp), so it needs nothing beyond the service's own dependencies and
runs anywhere the service does. C concurrent loops each POST a body of N real (or
synthetic) titles to URL, over keep-alive connections, for S seconds; a progress line
refreshes every second on stderr, then a summary goes to stdout, or JSON with --json:

- failures first: time-outs, connection errors and unexpected statuses, by kind;
- refusals: 503 answers with `Retry-After` (the service's admission control), apart;
- then the throughput of the successful requests only, and their latency percentiles;
- with `--probe /healthz`, the latency of a liveness probe sent every 100 ms on a fresh
  connection during the run, as an orchestrator would (from a process of its own).

It spends about as much CPU per request as the service does, so on the service's own
host it cannot saturate it, and it says so when it used most of a core itself: use it
from other machines (several at once for more load), or `make bench` (wrk) for the
service's ceiling on one host. Exit code 1 when any request failed (a refusal with
Retry-After is not a failure).

The overload scenario of the README ("Capacity and overload"), against a running service:

    python -m bench.load URL --titles 10000 --title-chars 380 --concurrency 256 \
        --duration 20 --timeout 30 --probe /healthz

(`python -m bench.overload` runs the same against a server it starts, with memory and a
SIGTERM after the burst.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench import payloads

# Above this share of one core, the generator itself is likely the bottleneck.
CLIENT_SATURATED_CPU = 0.85


class Stats:
    def __init__(self) -> None:
        self.latencies: List[float] = []  # successful requests only
        self.refused = 0  # 503 with Retry-After
        self.retry_after: List[int] = []
        self.failures: Counter[str] = Counter()  # everything else that is not a 200
        self.titles = 0
        self.probe_latencies: List[float] = []
        self.probe_failures: Counter[str] = Counter()

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.refused + sum(self.failures.values())


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def padded_titles(titles: List[str], chars: int) -> List[str]:
    """Each title repeated (space-separated) and cut to `chars` characters."""
    return [((title + " ") * (chars // (len(title) + 1) + 1))[:chars].strip() for title in titles]


async def _record(response: aiohttp.ClientResponse, started: float, n: int, stats: Stats) -> None:
    await response.read()
    if response.status == 200:
        stats.latencies.append(time.perf_counter() - started)
        stats.titles += n
    elif response.status == 503 and response.headers.get("Retry-After", "").isdigit():
        stats.refused += 1
        stats.retry_after.append(int(response.headers["Retry-After"]))
    else:
        stats.failures[f"HTTP {response.status}"] += 1


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    bodies: List[bytes],
    n: int,
    stop_at: float,
    stats: Stats,
    offset: int,
) -> None:
    i = offset
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < stop_at:
        body = bodies[i % len(bodies)]
        i += 1
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await _record(response, start, n, stats)
        except asyncio.TimeoutError:
            stats.failures["time-out"] += 1
        except (aiohttp.ClientError, OSError) as exc:
            stats.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.01)  # a refused connection would otherwise spin


async def _probe(url: str, seconds: float, stats: Stats) -> None:
    """A liveness probe every 100 ms on a fresh connection (bench/probe.py), in a process
    of its own: this generator's busy event loop would add its own delays."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.probe",
        url,
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        cwd=payloads.ROOT,
    )
    output, _ = await child.communicate()
    for latency in json.loads(output or b"[]"):
        if latency is None:
            stats.probe_failures["failed"] += 1
        else:
            stats.probe_latencies.append(latency)


async def _progress(stats: Stats, started: float, duration: float, out: Any) -> None:
    last_ok, last_time = 0, started
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        recent = sorted(stats.latencies[-2000:])
        rate = (len(stats.latencies) - last_ok) / (now - last_time)
        last_ok, last_time = len(stats.latencies), now
        out.write(
            f"\r{now - started:5.0f}/{duration:g} s  {rate:8.0f} ok/s  "
            f"p50 {1000 * percentile(recent, 50):7.2f} ms  p99 {1000 * percentile(recent, 99):7.2f} ms  "
            f"refused {stats.refused}  failed {sum(stats.failures.values())}   "
        )
        out.flush()


def probe_url(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


async def run(
    url: str,
    titles: int,
    concurrency: int,
    duration: float,
    timeout: float,
    progress: bool,
    title_chars: int = 0,
    probe: Optional[str] = None,
) -> Dict[str, Any]:
    texts = payloads.load_titles()
    if title_chars:
        texts = padded_titles(texts, title_chars)
    bodies = payloads.bodies(texts, titles, 16 if titles < 1000 else 4)
    stats = Stats()
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        started = time.perf_counter()
        stop_at = started + duration
        reporter = (
            asyncio.ensure_future(_progress(stats, started, duration, sys.stderr)) if progress else None
        )
        tasks = [_client(session, url, bodies, titles, stop_at, stats, k) for k in range(concurrency)]
        if probe:
            tasks.append(_probe(probe_url(url, probe), duration, stats))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        if reporter is not None:
            reporter.cancel()
            sys.stderr.write("\n")
    return summarise(stats, url, titles, concurrency, elapsed, (time.process_time() - cpu_before) / elapsed)


def summarise(
    stats: Stats, url: str, titles: int, concurrency: int, elapsed: float, client_cpu: float
) -> Dict[str, Any]:
    latencies = sorted(stats.latencies)
    ms = {f"p{q:g}_ms": round(1000 * percentile(latencies, q), 3) for q in (50, 90, 99, 99.9)}
    probes = sorted(stats.probe_latencies)
    return {
        "url": url,
        "titles_per_request": titles,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": stats.requests,
        "ok": len(latencies),
        "refused_503": stats.refused,
        "retry_after_s": sorted(set(stats.retry_after)),
        "failures": dict(stats.failures),
        "ok_per_s": round(len(latencies) / elapsed, 1),
        "titles_per_s": round(stats.titles / elapsed, 1),
        **ms,
        "max_ms": round(1000 * latencies[-1], 3) if latencies else 0.0,
        "probe": {
            "count": len(probes),
            "p50_ms": round(1000 * percentile(probes, 50), 3),
            "p99_ms": round(1000 * percentile(probes, 99), 3),
            "max_ms": round(1000 * probes[-1], 3) if probes else 0.0,
            "failures": dict(stats.probe_failures),
        },
        "client_cpu": round(client_cpu, 2),
    }


def report(summary: Dict[str, Any]) -> str:
    lines = []
    if summary["failures"]:
        lines.append(f"FAILED: {sum(summary['failures'].values())} requests: {summary['failures']}")
    if summary["refused_503"]:
        lines.append(
            f"refused: {summary['refused_503']} requests got 503 with Retry-After "
            f"{summary['retry_after_s']} s (the service's admission control)"
        )
    lines.append(
        f"{summary['ok']} successful requests in {summary['seconds']:.1f} s: "
        f"{summary['ok_per_s']:.0f} req/s, {summary['titles_per_s']:.0f} titles/s "
        f"({summary['titles_per_request']} per request, {summary['concurrency']} concurrent)"
    )
    lines.append(
        f"latency ms of the successful requests: p50 {summary['p50_ms']}  p90 {summary['p90_ms']}  "
        f"p99 {summary['p99_ms']}  p99.9 {summary['p99.9_ms']}  max {summary['max_ms']}"
    )
    probe = summary["probe"]
    if probe["count"] or probe["failures"]:
        lines.append(
            f"probe ms: p50 {probe['p50_ms']}  p99 {probe['p99_ms']}  max {probe['max_ms']}  "
            f"({probe['count']} answered, failures: {probe['failures'] or 'none'})"
        )
    if summary["client_cpu"] >= CLIENT_SATURATED_CPU:
        lines.append(
            f"warning: this load generator used {summary['client_cpu']:.0%} of a core: the figures "
            "above may be its own limit, not the server's (use wrk, or several generators)"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,  # the whole of it: the README points to the overload scenario here
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="e.g. http://localhost:8080/v1/categorize")
    parser.add_argument("--titles", type=int, default=1, help="products per request (default 1)")
    parser.add_argument(
        "--title-chars", type=int, default=0, help="pad each title to this many characters (default: as is)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--probe", metavar="PATH", help="also probe this path, e.g. /healthz")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.titles < 1 or args.concurrency < 1 or args.duration <= 0 or args.title_chars < 0:
        parser.error("--titles and --concurrency must be >= 1, --duration > 0, --title-chars >= 0")
    summary = asyncio.run(
        run(
            args.url,
            args.titles,
            args.concurrency,
            args.duration,
            args.timeout,
            not args.quiet,
            args.title_chars,
            args.probe,
        )
    )
    print(json.dumps(summary) if args.json else report(summary))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
