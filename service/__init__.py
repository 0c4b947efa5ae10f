"""Serving layer of the product categorizer.

Layers, imports only go down: `server`/`supervisor` (processes, signals) -> `app`
(aiohttp wiring) -> `handlers` (HTTP) -> `schema`, `scheduler` -> the onnxruntime
wrapper `runtime.categorizer` (outside this package: the batch scorer shares it).
Nothing here imports the training package `categorizer/`.

Deliberately empty: importing `service.settings` (what `api.py` does first) must not
pull in aiohttp and onnxruntime; `create_app` lives in `service.app`.
"""
