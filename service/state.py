"""What a running app holds, under one typed key."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from service.batcher import Batcher
from service.categorizer import Categorizer
from service.metrics import Metrics
from service.schema import RequestDecoder
from service.settings import Settings


@dataclass
class State:
    settings: Settings
    model: Categorizer
    # Runs big batches off the event loop. One thread: the worker's other CPU time
    # belongs to the event loop, and it bounds the padded batches in memory at once.
    executor: ThreadPoolExecutor
    decoder: RequestDecoder
    metrics: Metrics
    openapi: bytes  # encoded once: the document depends on the settings only
    # Shares model calls between concurrent small requests; None when BATCH_MAX_PRODUCTS=0.
    batcher: Optional[Batcher] = None
    # Set on SIGTERM: /readyz answers 503 and responses close their connection.
    draining: bool = False


STATE = web.AppKey("state", State)
