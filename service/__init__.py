"""Serving layer of the product categorizer.

Layers, imports only go down: `server`/`supervisor` (processes, signals) -> `app`
(aiohttp wiring) -> `handlers` (HTTP) -> `schema`, `categorizer` (no aiohttp).
Nothing here imports the training package `categorizer/`.
"""

from service.app import create_app

__all__ = ["create_app"]
