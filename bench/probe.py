"""A liveness probe in a process of its own: `python -m bench.probe URL SECONDS`.

GETs URL on a fresh connection every 100 ms, as an orchestrator's probe does, and
prints a JSON list of the latencies (seconds; null for a failure) when done. A process
of its own, so that a busy load generator's event loop does not add to what it measures.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import List, Optional, Sequence
from urllib.parse import urlsplit

INTERVAL = 0.1
TIMEOUT = 10.0


def once(url: str) -> Optional[float]:
    parts = urlsplit(url)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=TIMEOUT)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        response.read()
        return time.perf_counter() - start if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def probe(url: str, seconds: float) -> List[Optional[float]]:
    latencies: List[Optional[float]] = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        latencies.append(once(url))
        time.sleep(max(0.0, INTERVAL - (time.perf_counter() - started)))
    return latencies


def main(argv: Optional[Sequence[str]] = None) -> int:
    url, seconds = (argv or sys.argv[1:])[:2]
    print(json.dumps(probe(url, float(seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
