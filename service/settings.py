"""Service settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, TypeVar

# Request limits. Each bounds the work or memory one request can cost a worker.
# The model pads every title of a batch to the longest one, so memory grows with
# products x longest title: these two caps keep one request's padded batch bounded.
DEFAULT_MAX_PRODUCTS = 10_000
# Real Elo7 titles are under 200 characters; 1000 leaves room without letting one
# title dominate a batch's padding.
DEFAULT_MAX_TITLE_CHARS = 1_000
# Tags are a space-separated list that the model reads like a second title.
DEFAULT_MAX_TAGS_CHARS = 5_000
# Listing fields (issue 13), each optional. A seller id is an identifier, not text to read;
# the numbers' bounds are far above the training data's largest values (price 11,509
# reais, weight 65,009 g, minimum quantity 3,000) and only refuse what cannot be a listing.
DEFAULT_MAX_SELLER_ID_CHARS = 64
DEFAULT_MAX_PRICE = 1_000_000.0  # reais (BRL)
DEFAULT_MAX_WEIGHT = 1_000_000.0  # grams
DEFAULT_MAX_MINIMUM_QUANTITY = 1_000_000.0  # units
# A full 10,000-product request with ordinary titles and tags is ~1.5 MiB of JSON.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Micro-batching (service/scheduler.py): the most products one shared model call takes.
# It pays for small requests (measured ~1.9x req/s at 1 title, 32 connections: one model
# call's ~0.1 ms fixed cost is shared); at 100 products per request merging did not win
# (0.7-0.8x, noisy), so requests of 64 products or more keep calling the model alone.
DEFAULT_BATCH_MAX_PRODUCTS = 64
# Admission control (service/scheduler.py), per worker. A waiting request holds its body
# and then its decoded strings, together about twice its size: 16 MiB of pending bodies
# keeps a worker within ~40 MiB over its idle size, whatever the number of clients, and
# still admits four maximum-size requests at once.
DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024
# A request that would wait longer than this for the model is refused (503 + Retry-After)
# rather than answered late: well inside common client time-outs (30 s and more).
DEFAULT_MAX_QUEUE_SECONDS = 5.0

# Highest bound a listing number's limit may be set to: the model reads float32, which
# holds every value up to here (its largest is ~3.4e38), if rounded.
_MAX_BOUND = 1e15

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# prometheus-client reads this variable in each worker (service/supervisor.py sets it).
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

T = TypeVar("T")


class SettingsError(ValueError):
    """A bad environment value; the message is one line meant for the operator."""


def default_workers() -> int:
    # sched_getaffinity honours CPU pinning (taskset, cpusets); cpu_count does not.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    # Path of the exported ONNX model (labels and feature spec are in its metadata).
    model_path: str = "artifacts/model.onnx"
    # Interface to listen on; 0.0.0.0 so the service is reachable inside a container.
    host: str = "0.0.0.0"
    # TCP port, shared by all workers through SO_REUSEPORT.
    port: int = 8080
    # Worker processes, each with its own event loop, app and model session. The model
    # runs single-threaded, so from_env defaults to one worker per CPU. With 1 the
    # server runs in this process, without a supervisor.
    workers: int = 1
    # Most products in one request (see DEFAULT_MAX_PRODUCTS).
    max_products: int = DEFAULT_MAX_PRODUCTS
    # Longest title accepted, in characters.
    max_title_chars: int = DEFAULT_MAX_TITLE_CHARS
    # Longest concatenated_tags accepted, in characters.
    max_tags_chars: int = DEFAULT_MAX_TAGS_CHARS
    # Largest request body; bigger ones get 413 before being read.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Level of the service's JSON log lines.
    log_level: str = "INFO"
    # Fraction of requests written to the access log: 0 = off (the default, per-request
    # logging costs throughput), 1 = every request, 0.01 = one in a hundred.
    access_log_sample: float = 0.0
    # After SIGTERM: seconds /readyz answers 503 while requests are still served
    # normally, so the load balancer stops routing here before we stop accepting.
    drain_seconds: float = 5.0
    # After the drain: seconds in-flight requests get to finish before being cancelled.
    grace_seconds: float = 10.0
    # Micro-batching: concurrent requests of fewer products than this share one model
    # call of at most this many products (service/scheduler.py); bigger requests run alone.
    # 0 turns it off: every request calls the model by itself.
    batch_max_products: int = DEFAULT_BATCH_MAX_PRODUCTS
    # Longest a client may take to send its body once the headers are in: a slow
    # client must not hold a connection (and its memory) forever. 408 after that.
    body_timeout_seconds: float = 30.0
    # Admission: body bytes of the requests a worker has admitted and not yet answered.
    # A request that does not fit is refused (503) before its body is read; a worker
    # with nothing pending admits any request up to MAX_BODY_BYTES.
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    # Admission: longest a request may wait for the model (estimated on arrival, checked
    # again before its model call); a request that would wait longer gets 503.
    max_queue_seconds: float = DEFAULT_MAX_QUEUE_SECONDS
    # With WORKERS > 1: the directory where the workers keep their metrics, so that any
    # of them answers /metrics for all (prometheus-client's multiprocess mode; the name
    # is that library's). Created if missing, emptied of metric files at start and at
    # exit; "" = a private directory in the temporary directory, removed at exit.
    metrics_dir: str = ""
    # Longest seller_id accepted, in characters (an integer's decimal digits, sign included).
    max_seller_id_chars: int = DEFAULT_MAX_SELLER_ID_CHARS
    # Largest price (reais), weight (grams) and minimum_quantity (units) accepted.
    max_price: float = DEFAULT_MAX_PRICE
    max_weight: float = DEFAULT_MAX_WEIGHT
    max_minimum_quantity: float = DEFAULT_MAX_MINIMUM_QUANTITY

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Settings:
        """Reads the environment; raises SettingsError naming the bad variable."""
        e = os.environ if env is None else env
        return cls(
            model_path=_read(e, "MODEL_PATH", _as_is, cls.model_path),
            host=_read(e, "HOST", _as_is, cls.host),
            port=_read(e, "PORT", _int_between(1, 65535), cls.port),
            workers=_read(e, "WORKERS", _int_between(1, 256), default_workers()),
            max_products=_read(e, "MAX_PRODUCTS", _int_between(1, 1_000_000), cls.max_products),
            max_title_chars=_read(e, "MAX_TITLE_CHARS", _int_between(1, 1_000_000), cls.max_title_chars),
            max_tags_chars=_read(e, "MAX_TAGS_CHARS", _int_between(0, 1_000_000), cls.max_tags_chars),
            max_body_bytes=_read(e, "MAX_BODY_BYTES", _int_between(1024, 1 << 30), cls.max_body_bytes),
            log_level=_read(e, "LOG_LEVEL", _log_level, cls.log_level),
            access_log_sample=_read(e, "ACCESS_LOG", _access_log, cls.access_log_sample),
            drain_seconds=_read(e, "DRAIN_SECONDS", _float_between(0, 3600), cls.drain_seconds),
            grace_seconds=_read(e, "GRACE_SECONDS", _float_between(0, 3600), cls.grace_seconds),
            batch_max_products=_read(
                e, "BATCH_MAX_PRODUCTS", _int_between(0, 100_000), cls.batch_max_products
            ),
            body_timeout_seconds=_read(
                e, "BODY_TIMEOUT_SECONDS", _float_between(0.1, 3600), cls.body_timeout_seconds
            ),
            max_pending_bytes=_read(
                e, "MAX_PENDING_BYTES", _int_between(1024, 1 << 40), cls.max_pending_bytes
            ),
            max_queue_seconds=_read(
                e, "MAX_QUEUE_SECONDS", _float_between(0.001, 3600), cls.max_queue_seconds
            ),
            metrics_dir=_read(e, METRICS_DIR_VARIABLE, _as_is, cls.metrics_dir),
            max_seller_id_chars=_read(
                e, "MAX_SELLER_ID_CHARS", _int_between(1, 1_000_000), cls.max_seller_id_chars
            ),
            max_price=_read(e, "MAX_PRICE", _float_between(0, _MAX_BOUND, "a number"), cls.max_price),
            max_weight=_read(e, "MAX_WEIGHT", _float_between(0, _MAX_BOUND, "a number"), cls.max_weight),
            max_minimum_quantity=_read(
                e, "MAX_MINIMUM_QUANTITY", _float_between(0, _MAX_BOUND, "a number"), cls.max_minimum_quantity
            ),
        )


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"invalid {name}={raw!r}: {exc}") from None


def _as_is(raw: str) -> str:
    return raw


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value

    return parse


def _float_between(low: float, high: float, what: str = "a number of seconds") -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected {what}") from None
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"expected a number between {low:g} and {high:g}")
        return value

    return parse


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def _access_log(raw: str) -> float:
    flag = raw.lower()
    if flag in ("off", "0", "false", "no"):
        return 0.0
    if flag in ("on", "1", "true", "yes"):
        return 1.0
    try:
        rate = float(flag)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError("expected off, on, or a sampling fraction between 0 and 1")
    return rate
