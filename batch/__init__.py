"""Batch scoring of a catalogue file: `python score.py INPUT OUTPUT` (make score).

Layers, imports only go down: `score.py` -> `cli` (arguments, exit codes, the summary
line) -> `local`, `spark` (the engines) -> `scoring` (a batch of rows -> model inputs ->
category and confidence; the one code path of both engines), `io` (CSV and Parquet in
record batches, written under a temporary name and renamed at the end), `job` (what is
asked, what went wrong, what was done) -> `runtime.categorizer`, the service's wrapper.

Never imports `service/` (aiohttp) or the training package; pyspark is imported only by
`spark`, and only when that engine runs.
"""
