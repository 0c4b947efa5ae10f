"""The benchmark tools run (smoke tests). Benchmarks are not tests: no timing is asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import anchor, load, payloads, run, wrk
from service.app import create_app
from service.settings import Settings
from tests.conftest import AiohttpClient, Client
from tests.datasets import ROOT


def test_bodies_are_valid_requests_of_the_asked_size() -> None:
    titles = payloads.load_titles()
    bodies = payloads.bodies(titles, 3, 2)
    assert len(bodies) == 2
    for body in bodies:
        products = json.loads(body)["products"]
        assert len(products) == 3
        assert all(p["title"].strip() for p in products)


def test_lua_long_strings_survive_any_body() -> None:
    body = b'{"products":[{"title":"a]]b]=]c"}]}'
    quoted = wrk._lua_string(body)
    assert quoted.startswith("[==[")
    assert quoted.endswith("]==]")


async def test_load_tool_reports_requests_and_errors(client: Client) -> None:
    url = str(client.make_url("/v1/categorize"))
    summary = await load.run(url, titles=2, concurrency=4, duration=0.5, timeout=10, progress=False)
    assert summary["requests"] > 0
    assert summary["ok"] == summary["requests"]
    assert summary["titles_per_s"] == pytest.approx(2 * summary["ok"] / summary["seconds"], rel=0.01)
    assert summary["failures"] == {}
    assert not load.report(summary).startswith("FAILED")


async def test_load_tool_headlines_failures_not_throughput(client: Client) -> None:
    missing = await load.run(str(client.make_url("/nope")), 1, 2, 0.2, 10, False, probe="/healthz")
    assert missing["ok"] == 0
    assert missing["ok_per_s"] == 0
    assert set(missing["failures"]) == {"HTTP 404"}
    text = load.report(missing)
    assert text.splitlines()[0].startswith("FAILED: ")
    assert "0 successful requests" in text
    assert missing["probe"]["count"] > 0  # /healthz answered meanwhile


async def test_load_tool_counts_refusals_apart(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    # Every request but the first on an idle worker is over this tiny budget.
    app = create_app(dataclasses.replace(settings, max_pending_bytes=1024))
    client = await aiohttp_client(app)
    url = str(client.make_url("/v1/categorize"))
    summary = await load.run(url, 200, 8, 0.5, 10, False, title_chars=40)
    assert summary["refused_503"] > 0
    assert summary["failures"] == {}
    assert all(seconds >= 1 for seconds in summary["retry_after_s"])
    assert "refused: " in load.report(summary)


def test_padded_titles_have_the_asked_length() -> None:
    padded = load.padded_titles(["caneca azul", "kit"], 380)
    assert [len(t) for t in padded] == [380, 379]  # cut at 380, trailing space stripped
    assert padded[0].startswith("caneca azul caneca azul")


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed (apt-get install wrk)")
def test_bench_quick_run_writes_results(tmp_path: Path, model_path: str) -> None:
    out = tmp_path / "latest.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--titles", "1", "--out", str(out)]
    env = {**os.environ, "MODEL_PATH": model_path}
    env.pop("WORKERS", None)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    service_rows = data["service"]
    assert service_rows
    assert all(row["requests"] > 0 for row in service_rows)
    assert all(row["errors"] == 0 for row in service_rows)
    assert data["raw_http"]
    assert data["ceiling"]
    assert data["startup_seconds"] > 0
    assert "req/s" in result.stdout


def test_anchor_serves_the_same_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask")
    dataset = tmp_path / "listings.csv"
    rows = (
        ["title,category"]
        + [f"caneca {i},Decoração" for i in range(6)]
        + [f"body {i},Bebê" for i in range(6)]
    )
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.setenv("DATASET_PATH", str(dataset))
    client = anchor.create_app(anchor.load_or_train(tmp_path / "anchor.pkl")).test_client()
    response = client.post("/v1/categorize", json={"products": [{"title": "caneca azul"}, {"title": "body"}]})
    assert response.status_code == 200
    assert response.get_json() == {"categories": ["Decoração", "Bebê"]}
    assert client.get("/healthz").status_code == 200


def test_ratios_take_the_faster_of_the_measured_and_the_quoted_anchor() -> None:
    quoted = run.ANCHOR_REQ_PER_S[100]
    service = {"titles": 100, "connections": 32, "req_per_s": 1000.0}
    faster = [{"titles": 100, "connections": 32, "req_per_s": quoted * 2}]
    slower = [{"titles": 100, "connections": 32, "req_per_s": quoted / 2}]
    assert run._vs_anchor(service, faster) == round(1000.0 / (quoted * 2), 2)
    assert run._vs_anchor(service, slower) == round(1000.0 / quoted, 2)
    # A measurement at other settings is never used.
    assert run._vs_anchor({**service, "connections": 8}, faster) == round(1000.0 / quoted, 2)
