"""The overload scenario, end to end: `python -m bench.overload` (`make bench-overload`).

Starts `python api.py` with default settings (or `--env K=V`, or another checkout with
`--cwd`), then:

1. a burst: `--clients` concurrent clients each POST bodies of `--titles` products with
   titles of `--title-chars` characters (10,000 x 380: ~4 MB) for `--duration` seconds,
   with a `--timeout` per request, while a liveness probe hits /healthz every 100 ms
   and the process tree's RSS is sampled every 50 ms;
2. `--settle` seconds of rest, then the tree's RSS again (memory given back?);
3. a second, shorter burst, and SIGTERM to the service as soon as its clients stop
   sending: how the requests still waiting end, how long the service takes to exit,
   its exit code, and the lines it wrote on stderr other than INFO log lines.

Prints each figure beside the goal of issue 12 and writes JSON (`--out`).
A measurement, not a test: nothing here fails on a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from bench import load, procs
from bench.payloads import ROOT

DEFAULT_OUT = ROOT / "bench" / "results" / "overload.json"
# The service's defaults, spelled out so that the exit deadline below matches them.
DRAIN_SECONDS = 5.0
GRACE_SECONDS = 10.0


def mb(nbytes: int) -> float:
    return round(nbytes / 2**20, 1)


async def burst(server: procs.Server, args: argparse.Namespace, duration: float) -> Dict[str, Any]:
    url = server.url + "/v1/categorize"
    return await load.run(
        url, args.titles, args.clients, duration, args.timeout, False, args.title_chars, "/healthz"
    )


async def burst_then_sigterm(server: procs.Server, args: argparse.Namespace) -> Dict[str, Any]:
    """A short burst; SIGTERM when its clients stop sending, while answers are pending."""
    duration = args.duration / 4
    running = asyncio.ensure_future(burst(server, args, duration))
    await asyncio.sleep(duration)
    signalled = time.perf_counter()
    server.proc.terminate()
    summary = await running
    code = await asyncio.to_thread(server.proc.wait, DRAIN_SECONDS + GRACE_SECONDS + 30)
    return {
        "burst": summary,
        "answers_done_after_sigterm_s": round(time.perf_counter() - signalled, 2),
        "exit_code": code,
        "exit_after_s": round(time.perf_counter() - signalled, 2),
    }


def other_stderr_lines(text: str) -> List[str]:
    """stderr lines that are not INFO log lines (JSON lines with "level": "INFO")."""
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and record.get("level") == "INFO"):
            lines.append(line)
    return lines


def scenario(args: argparse.Namespace, logs: Path) -> Dict[str, Any]:
    env = {"LOG_LEVEL": "INFO", **dict(kv.split("=", 1) for kv in args.env)}
    server = procs.Server(["api.py"], env, cwd=args.cwd, logs=logs)
    try:
        time.sleep(1.0)
        idle = procs.tree_rss_bytes(server.proc.pid)
        with procs.PeakRss(server.proc.pid) as sampler:
            first = asyncio.run(burst(server, args, args.duration))
            time.sleep(args.settle)
            settled = procs.tree_rss_bytes(server.proc.pid)
        stop = asyncio.run(burst_then_sigterm(server, args))
    finally:
        server.stop()
    return {
        "settings": {"env": env, "cwd": args.cwd, "workers": len(server.worker_pids())},
        "scenario": {
            k: getattr(args, k) for k in ("clients", "titles", "title_chars", "duration", "timeout")
        },
        "burst": first,
        "rss_mb": {"idle": mb(idle), "peak": mb(sampler.peak), f"after_{args.settle:g}s": mb(settled)},
        "sigterm": {**stop, "other_stderr_lines": len(other_stderr_lines(server.stderr_text()))},
        "stderr_sample": other_stderr_lines(server.stderr_text())[:5],
    }


def verdicts(result: Dict[str, Any]) -> List[str]:
    """Each goal of issue 12 as it states it, beside what this run measured."""
    b, rss, stop = result["burst"], result["rss_mb"], result["sigterm"]
    settled = next(v for k, v in rss.items() if k.startswith("after_"))
    deadline = DRAIN_SECONDS + GRACE_SECONDS + 3
    rows = [
        (
            not b["failures"],
            f"every request 200 or 503 + Retry-After: {b['ok']} x 200, "
            f"{b['refused_503']} x 503, failures {b['failures'] or 'none'}",
        ),
        (
            b["probe"]["p99_ms"] <= 200 and not b["probe"]["failures"],
            f"/healthz p99 <= 200 ms: p99 {b['probe']['p99_ms']} ms, max {b['probe']['max_ms']} ms, "
            f"failures {b['probe']['failures'] or 'none'}",
        ),
        (rss["peak"] <= 800, f"peak RSS of the tree <= 800 MB: {rss['peak']} MB (idle {rss['idle']} MB)"),
        (settled <= 2 * rss["idle"], f"RSS after the burst <= 2x idle: {settled} MB"),
        (
            not stop["burst"]["failures"],
            f"SIGTERM after a burst, waiting requests answered: {stop['burst']['ok']} x 200, "
            f"{stop['burst']['refused_503']} x 503, failures {stop['burst']['failures'] or 'none'}",
        ),
        (
            stop["exit_code"] == 0 and stop["exit_after_s"] <= deadline,
            f"exit 0 within {deadline:g} s: exit {stop['exit_code']} after {stop['exit_after_s']} s",
        ),
        (stop["other_stderr_lines"] <= 10, f"<= 10 non-INFO stderr lines: {stop['other_stderr_lines']}"),
    ]
    return [f"{'met   ' if ok else 'MISSED'} {text}" for ok, text in rows]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--titles", type=int, default=10_000, help="products per request")
    parser.add_argument("--title-chars", type=int, default=380)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the first burst")
    parser.add_argument("--timeout", type=float, default=30.0, help="client time-out per request")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of rest before the RSS reading")
    parser.add_argument("--env", nargs="*", default=[], metavar="K=V", help="settings of the service")
    parser.add_argument("--cwd", help="run api.py from another checkout (a before/after comparison)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logs:
        result = scenario(args, Path(logs))
    result["goals"] = verdicts(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(load.report(result["burst"]))
    print("\n".join(result["goals"]))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
