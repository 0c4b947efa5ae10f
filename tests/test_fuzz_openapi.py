"""Schemathesis against a running `python api.py`, driven by its own /openapi.json.

Positive cases (bodies, query values and headers the schema allows) and negative ones
(what it forbids) for every operation; no response may be a 5xx, and each must match
what the document promises for its status, its body and its headers (X-Request-ID,
X-Model-Version, Server-Timing, Retry-After). FUZZ_EXAMPLES raises the count (`make fuzz`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from collections import Counter
from typing import Any, Dict, Iterator

import pytest

from bench import procs
from runtime.categorizer import LISTING_FIELDS
from tests.datasets import model_file
from tests.servers import STOP_TIMEOUT_SECONDS, Launcher, unused_port

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis not installed (in requirements/dev.txt)"
)
from hypothesis import HealthCheck, example, given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
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


# RFC 9110: a field name is a token; a value is visible ASCII, obs-text, spaces and tabs.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def valid_header_fields(headers: Dict[str, Any]) -> bool:
    return all(
        _TOKEN.fullmatch(name) and isinstance(value, str) and _FIELD_VALUE.fullmatch(value)
        for name, value in headers.items()
    )


def has_listing_fields(body: Any) -> bool:
    products = body.get("products") if isinstance(body, dict) else None
    return isinstance(products, list) and any(
        isinstance(product, dict) and product.keys() & set(LISTING_FIELDS) for product in products
    )


def listing_fields_case(operation: Any, product: Dict[str, Any]) -> Any:
    """A POST /v1/categorize case of one product, built as schemathesis builds its own."""
    return operation.Case(body={"products": [product]}, media_type="application/json")


@pytest.fixture(scope="module")
def document(base_url: str) -> Dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as response:
        doc: Dict[str, Any] = json.loads(response.read())
    return doc


def test_schemathesis_finds_no_server_error(base_url: str, document: Dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/categorize",
        "GET /v1/model",
        "GET /healthz",
    }
    strategy = st.one_of(
        *(op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode)
    )
    categorize = next(op for op in operations if op.path == "/v1/categorize")
    seen: Counter[str] = Counter()
    failures = []

    @hyp_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    # Generation is random and 1,200 cases do not always hold a body with the listing
    # fields that the server refuses: one of each kind runs first, through the same checks.
    @example(case=listing_fields_case(categorize, {"title": "caneca", "seller_id": 7, "price": 12.5}))
    @example(case=listing_fields_case(categorize, {"title": "caneca", "price": -1}))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url)
        seen[f"{case.method} {case.path} {response.status_code}"] += 1
        if case.query and "include" in case.query:
            seen[f"{case.method} {case.path}?include {response.status_code}"] += 1
        if has_listing_fields(case.body):
            seen[f"{case.method} {case.path} with listing fields {response.status_code}"] += 1
        if response.status_code >= 500:
            failures.append(case.as_curl_command())
        if not valid_header_fields(case.headers or {}):
            # Negative cases include header names and values HTTP does not allow: aiohttp's
            # parser answers them 400 in plain text before the service sees the request.
            return
        checks = [
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
        ]
        case.validate_response(response, checks=checks, excluded_checks=[negative_data_rejection])

    run()
    assert failures == []
    # The listing fields are in the document, and bodies carrying them were answered both ways.
    product = document["components"]["schemas"]["Product"]["properties"]
    assert set(LISTING_FIELDS) <= set(product)
    assert seen["POST /v1/categorize with listing fields 200"] > 0, seen
    assert seen["POST /v1/categorize with listing fields 400"] > 0, seen
    assert sum(seen.values()) >= EXAMPLES * 0.9, seen
    # Both kinds of bodies reached the model's endpoint.
    assert seen["POST /v1/categorize 200"] > 0, seen
    assert seen["POST /v1/categorize 400"] > 0, seen
    # The query parameter, with the value it takes and with others, and the model card.
    assert seen["POST /v1/categorize?include 200"] > 0, seen
    assert seen["POST /v1/categorize?include 400"] > 0, seen
    assert seen["GET /v1/model 200"] > 0, seen
