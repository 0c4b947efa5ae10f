"""Schemathesis against a running `python api.py`, driven by its own /openapi.json.

Positive cases (bodies the schema allows) and negative ones (bodies it forbids) for
every operation; no response may be a 5xx, and each must match what the document
promises for its status. FUZZ_EXAMPLES raises the count (`make fuzz`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections import Counter
from typing import Any, Dict, Iterator

import pytest

from bench import procs
from tests.datasets import model_file
from tests.servers import STOP_TIMEOUT_SECONDS, Launcher, unused_port

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis not installed (in requirements/dev.txt)"
)
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# Cases per run, all operations together; CI's default stays well under a minute.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1200"))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    launcher = Launcher(str(model_file()), unused_port())
    # LOG_LEVEL: 5xx are caught by status; keep the pipes quiet.
    proc = launcher.spawn(WORKERS="1", DRAIN_SECONDS="0", LOG_LEVEL="CRITICAL")
    try:
        procs.wait_ready(proc, f"{launcher.base}/readyz")
        yield launcher.base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        assert proc.returncode == 0, stderr


@pytest.fixture(scope="module")
def document(base_url: str) -> Dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        doc: Dict[str, Any] = json.loads(response.read())
    return doc


def test_schemathesis_finds_no_server_error(base_url: str, document: Dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/categorize", "GET /healthz"}
    strategy = st.one_of(
        *(op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode)
    )
    seen: Counter[str] = Counter()
    failures = []

    @hyp_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url)
        seen[f"{case.method} {case.path} {response.status_code}"] += 1
        if response.status_code >= 500:
            failures.append(case.as_curl_command())
        checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
        case.validate_response(response, checks=checks, excluded_checks=[negative_data_rejection])

    run()
    assert failures == []
    assert sum(seen.values()) >= EXAMPLES * 0.9, seen
    # Both kinds of bodies reached the model's endpoint.
    assert seen["POST /v1/categorize 200"] > 0, seen
    assert seen["POST /v1/categorize 400"] > 0, seen
