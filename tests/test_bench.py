"""The benchmark tools run (smoke tests). Benchmarks are not tests: no timing is asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

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
    summary = await load.run(url, 200, 8, 0.5, 10, False, title_chars=100)  # model-thread sized
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
    # The quick run measures no anchor: every goal of issue 4 is listed, none is met.
    assert data["anchor"] == []
    assert all(row["vs_anchor"] is None for row in service_rows)
    assert [g["status"] for g in data["goals"]] == ["not measured"] * 4


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


def service_row(titles: int, connections: int, req_per_s: float, p99_ms: float) -> Dict[str, Any]:
    return {"titles": titles, "connections": connections, "req_per_s": req_per_s, "p99_ms": p99_ms}


def test_ratios_are_only_to_the_anchor_measured_at_the_same_settings() -> None:
    anchor_rows = [service_row(100, 32, 400.0, 50.0)]
    assert run._vs_anchor(service_row(100, 32, 1000.0, 9.0), anchor_rows) == 2.5
    # Another connection count, another request size, or no anchor at all: no ratio.
    assert run._vs_anchor(service_row(100, 8, 1000.0, 9.0), anchor_rows) is None
    assert run._vs_anchor(service_row(1, 32, 1000.0, 9.0), anchor_rows) is None
    assert run._vs_anchor(service_row(100, 32, 1000.0, 9.0), []) is None


def results(service: List[Dict[str, Any]], anchor_rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    for row in service:
        row["errors"] = 0
        row["vs_anchor"] = run._vs_anchor(row, anchor_rows)
    return {"service": service, "anchor": anchor_rows}


def test_goals_list_every_goal_of_issue_4_met_missed_or_not_measured() -> None:
    anchor_rows = [service_row(1, 32, 1000.0, 20.0), service_row(100, 32, 200.0, 80.0)]
    service = [service_row(1, 32, 12_000.0, 3.0), service_row(100, 32, 900.0, 30.0)]
    listed = run.goals(results(service, anchor_rows))
    statuses = [(g["status"], g["measured"]) for g in listed]
    # 12x >= 10x; 4.5x < 5x; no 1,000-title row; p99 3.0 ms > 20 ms / 10.
    assert statuses == [("met", 12.0), ("missed", 4.5), ("not measured", None), ("missed", 3.0)]
    assert "2 ms" in listed[3]["goal"]


def test_without_the_anchor_no_goal_is_met_or_missed() -> None:
    service = [service_row(n, c, 10_000.0, 1.0) for n, c, _ in run.THROUGHPUT_GOALS]
    listed = run.goals(results(service, []))
    assert len(listed) == len(run.THROUGHPUT_GOALS) + 1
    assert {g["status"] for g in listed} == {"not measured"}
    assert {g["measured"] for g in listed} == {None}


def test_quick_run_has_its_own_results_file(tmp_path: Path) -> None:
    assert run.output_path(None, quick=True) != run.output_path(None, quick=False)
    assert run.output_path(tmp_path, quick=True) == tmp_path
