"""A load generator for load testers: `python -m bench.load URL --titles N --concurrency C --duration S`.

Pure Python (aiohttp), so it needs nothing beyond the service's own dependencies and
runs anywhere the service does. C concurrent loops each POST a body of N real (or
synthetic) titles to URL, over keep-alive connections, for S seconds; a progress line
refreshes every second on stderr, then a summary (req/s, titles/s, latency
percentiles, errors by kind) goes to stdout, or JSON with --json.

It spends about as much CPU per request as the service does, so on the service's own
host it cannot saturate it: use it from other machines (several at once for more load),
or `make bench` (wrk) for the service's ceiling on one host. Exit code 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import aiohttp

from bench import payloads


class Stats:
    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.errors: Counter[str] = Counter()
        self.titles = 0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


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
                await response.read()
                if response.status == 200:
                    stats.latencies.append(time.perf_counter() - start)
                    stats.titles += n
                else:
                    stats.errors[f"HTTP {response.status}"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            stats.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)  # a refused connection would otherwise spin


async def _progress(stats: Stats, started: float, duration: float, out: Any) -> None:
    last_requests, last_time = 0, started
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        recent = sorted(stats.latencies[-2000:])
        rate = (stats.requests - last_requests) / (now - last_time)
        last_requests, last_time = stats.requests, now
        out.write(
            f"\r{now - started:5.0f}/{duration:g} s  {rate:8.0f} req/s  "
            f"p50 {1000 * percentile(recent, 50):7.2f} ms  p99 {1000 * percentile(recent, 99):7.2f} ms  "
            f"errors {sum(stats.errors.values())}   "
        )
        out.flush()


async def run(
    url: str, titles: int, concurrency: int, duration: float, timeout: float, progress: bool
) -> Dict[str, Any]:
    bodies = payloads.bodies(payloads.load_titles(), titles, 16 if titles < 1000 else 4)
    stats = Stats()
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        started = time.perf_counter()
        reporter = (
            asyncio.ensure_future(_progress(stats, started, duration, sys.stderr)) if progress else None
        )
        stop_at = started + duration
        await asyncio.gather(
            *(_client(session, url, bodies, titles, stop_at, stats, k) for k in range(concurrency))
        )
        elapsed = time.perf_counter() - started
        if reporter is not None:
            reporter.cancel()
            sys.stderr.write("\n")
    latencies = sorted(stats.latencies)
    ms = {f"p{q:g}_ms": round(1000 * percentile(latencies, q), 3) for q in (50, 90, 99, 99.9)}
    return {
        "url": url,
        "titles_per_request": titles,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": stats.requests,
        "ok": len(latencies),
        "req_per_s": round(stats.requests / elapsed, 1),
        "titles_per_s": round(stats.titles / elapsed, 1),
        **ms,
        "max_ms": round(1000 * latencies[-1], 3) if latencies else 0.0,
        "errors": dict(stats.errors),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://localhost:8080/v1/categorize")
    parser.add_argument("--titles", type=int, default=1, help="products per request (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.titles < 1 or args.concurrency < 1 or args.duration <= 0:
        parser.error("--titles and --concurrency must be >= 1, --duration > 0")
    summary = asyncio.run(
        run(args.url, args.titles, args.concurrency, args.duration, args.timeout, not args.quiet)
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['requests']} requests in {summary['seconds']:.1f} s: "
            f"{summary['req_per_s']:.0f} req/s, {summary['titles_per_s']:.0f} titles/s "
            f"({args.titles} per request, {args.concurrency} concurrent)\n"
            f"latency ms: p50 {summary['p50_ms']}  p90 {summary['p90_ms']}  p99 {summary['p99_ms']}  "
            f"p99.9 {summary['p99.9_ms']}  max {summary['max_ms']}\n"
            f"errors: {summary['errors'] or 'none'}"
        )
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
