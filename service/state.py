"""What a running app holds, under one typed key."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from runtime.categorizer import Categorizer
from service.metrics import Metrics
from service.scheduler import Scheduler
from service.schema import RequestDecoder
from service.settings import Settings
from service.slots import Slots


@dataclass
class State:
    settings: Settings
    model: Categorizer
    # Runs big batches off the event loop, one at a time (the scheduler decides).
    executor: ThreadPoolExecutor
    decoder: RequestDecoder
    metrics: Metrics
    openapi: bytes  # encoded once: the document depends on the settings only
    model_card: bytes  # GET /v1/model, encoded once: it depends on the model file only
    # Admission, queue, batching and where each model call runs.
    scheduler: Scheduler
    # Bounds how many refused bodies this worker reads and drops at once (handlers).
    discard_slots: Slots
    # Set on SIGTERM: /readyz answers 503 and responses close their connection.
    draining: bool = False


STATE = web.AppKey("state", State)
