"""Service variants side by side: `python -m bench.compare base: batch:BATCH_MAX_PRODUCTS=256`.

Each variant is `name:KEY=VALUE,KEY=VALUE` (environment of `python api.py`; the key CWD
runs api.py from another checkout, e.g. a copy of the code before a change). All variants
are started at once and idle between their turns; every round runs each of them once, in
rotated order, so background noise on the machine hits them alike. Medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from bench import payloads, procs, wrk


def parse_variant(spec: str) -> Tuple[str, Dict[str, str], Optional[str]]:
    name, _, assignments = spec.partition(":")
    env: Dict[str, str] = {}
    cwd: Optional[str] = None
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key == "CWD":
            cwd = value
        else:
            env[key] = value
    return name or spec, env, cwd


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name:KEY=VALUE,... (see the module docstring)")
    parser.add_argument("--titles", type=int, nargs="+", default=[1], help="titles per request")
    parser.add_argument("--connections", type=int, nargs="+", default=[32])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not wrk.available():
        print(f"error: {wrk.WRK_INSTALL}", file=sys.stderr)
        return 2
    titles = payloads.load_titles()
    variants = [parse_variant(v) for v in args.variants]
    servers: List[procs.Server] = []
    try:
        for _, env, cwd in variants:
            servers.append(procs.service(env, cwd))
        rows = []
        for n in args.titles:
            bodies = payloads.bodies(titles, n, 16 if n < 1000 else 4)
            for c in args.connections:
                runs: Dict[str, List[wrk.WrkResult]] = {name: [] for name, _, _ in variants}
                for r in range(args.rounds):
                    order = list(range(len(variants)))
                    order = order[r % len(order) :] + order[: r % len(order)]
                    for i in order:
                        result = wrk.run(servers[i].url + "/v1/categorize", bodies, c, args.duration)
                        runs[variants[i][0]].append(result)
                base = statistics.median(x.req_per_s for x in runs[variants[0][0]])
                for name, results in runs.items():
                    rps = statistics.median(x.req_per_s for x in results)
                    rows.append(
                        {
                            "variant": name,
                            "titles": n,
                            "connections": c,
                            "req_per_s": rps,
                            "ratio": round(rps / base, 2) if base else 0.0,
                            "p50_ms": statistics.median(x.p50_ms for x in results),
                            "p99_ms": statistics.median(x.p99_ms for x in results),
                            "errors": sum(x.errors for x in results),
                            "all_req_per_s": [x.req_per_s for x in results],
                        }
                    )
                    print(
                        f"{name:>14} titles={n:<5} c={c:<3} {rps:9.1f} req/s  x{rows[-1]['ratio']:<5} "
                        f"p50 {rows[-1]['p50_ms']:7.2f} ms  p99 {rows[-1]['p99_ms']:7.2f} ms  "
                        f"errors {rows[-1]['errors']}  runs {rows[-1]['all_req_per_s']}",
                        flush=True,
                    )
        print(json.dumps(rows))
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
