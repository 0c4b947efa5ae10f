"""Settings from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.settings import Settings, SettingsError, default_workers
from tests.datasets import ROOT


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.model_path == "artifacts/model.onnx"
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.workers == default_workers() >= 1
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.access_log_sample == 0.0
    assert (settings.drain_seconds, settings.grace_seconds) == (5.0, 10.0)


def test_reads_every_variable() -> None:
    env = {
        "MODEL_PATH": "m.onnx",
        "HOST": "127.0.0.1",
        "PORT": "9000",
        "WORKERS": "3",
        "MAX_PRODUCTS": "5",
        "MAX_TITLE_CHARS": "6",
        "MAX_TAGS_CHARS": "7",
        "MAX_BODY_BYTES": "2048",
        "LOG_LEVEL": "debug",
        "ACCESS_LOG": "0.25",
        "DRAIN_SECONDS": "1.5",
        "GRACE_SECONDS": "2",
        "MAX_SELLER_ID_CHARS": "8",
        "MAX_PRICE": "500.5",
        "MAX_WEIGHT": "1e5",
        "MAX_MINIMUM_QUANTITY": "10",
    }
    assert Settings.from_env(env) == Settings(
        "m.onnx",
        "127.0.0.1",
        9000,
        3,
        5,
        6,
        7,
        2048,
        "DEBUG",
        0.25,
        1.5,
        2.0,
        max_seller_id_chars=8,
        max_price=500.5,
        max_weight=100_000.0,
        max_minimum_quantity=10.0,
    )


def test_the_metrics_directory_is_prometheus_clients_variable() -> None:
    assert Settings.from_env({}).metrics_dir == ""  # the supervisor makes a private one
    assert Settings.from_env({"PROMETHEUS_MULTIPROC_DIR": "/run/metrics"}).metrics_dir == "/run/metrics"


@pytest.mark.parametrize(("flag", "rate"), [("on", 1.0), ("off", 0.0), ("1", 1.0), ("0.01", 0.01)])
def test_access_log_flag(flag: str, rate: float) -> None:
    assert Settings.from_env({"ACCESS_LOG": flag}).access_log_sample == rate


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "-1"),
        # Port 0 would give each worker a port of its own that no one is told of.
        ("PORT", "0"),
        ("WORKERS", "many"),
        ("MAX_BODY_BYTES", "10"),
        ("GRACE_SECONDS", "inf"),
        ("ACCESS_LOG", "2"),
        ("MAX_SELLER_ID_CHARS", "0"),
        ("MAX_PRICE", "-1"),
        ("MAX_WEIGHT", "nan"),
        ("MAX_MINIMUM_QUANTITY", "lots"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^invalid {name}={value!r}: expected"):
        Settings.from_env({name: value})


def test_reading_settings_imports_nothing_heavy() -> None:
    # api.py reads the settings (and blocks stop signals) before anything slow: a bad
    # setting fails at once, and a stop during start-up can be held back early.
    code = "import sys, api; print(sorted(set(sys.argv[1:]) & set(sys.modules)))"
    heavy = ["aiohttp", "onnxruntime", "numpy"]
    result = subprocess.run(
        [sys.executable, "-c", code, *heavy], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
