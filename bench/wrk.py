"""Driving wrk: a Lua script that POSTs prepared bodies, and its result as a dict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

WRK_INSTALL = "wrk is not installed: `sudo apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
_MARK = "BENCH_RESULT "

# Bodies are preformatted once per thread (init), then cycled; done() prints one JSON line.
_LUA = """
local bodies = {%(bodies)s}
local prepared = {}
local i = 0
init = function(args)
  for k, body in ipairs(bodies) do
    prepared[k] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  i = i %% #prepared + 1
  return prepared[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class WrkResult:
    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx responses
    non_2xx: int

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _lua_string(body: bytes) -> str:
    # A Lua long string cannot be broken by JSON text; choose a level not present in it.
    level = 0
    while b"]" + b"=" * level + b"]" in body:
        level += 1
    eq = "=" * level
    return f"[{eq}[{body.decode('utf-8')}]{eq}]"


def run(url: str, bodies: List[bytes], connections: int, seconds: float, threads: int = 2) -> WrkResult:
    """Runs wrk for `seconds` against url with `connections` keep-alive connections."""
    if not available():
        raise RuntimeError(WRK_INSTALL)
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    script = _LUA % {"bodies": ",\n".join(_lua_string(b) for b in bodies), "path": path, "mark": _MARK}
    fd, script_path = tempfile.mkstemp(prefix="bench-", suffix=".lua")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(script)
        threads = max(1, min(threads, connections))
        argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s"]
        argv += ["-s", script_path, url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        os.unlink(script_path)
    for line in out.stdout.splitlines():
        if line.startswith(_MARK):
            raw = json.loads(line[len(_MARK) :])
            break
    else:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    duration = raw["duration_us"] / 1e6
    sockets = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return WrkResult(
        requests=raw["requests"],
        seconds=round(duration, 3),
        req_per_s=round(raw["requests"] / duration, 1) if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=sockets + raw["status"],
        non_2xx=raw["status"],
    )
