"""Benchmarks and load tools for the categorizer API (not tests: nothing here asserts timings).

- `python -m bench`: the full benchmark (wrk against `python api.py`, the in-process
  onnxruntime ceiling and a no-model HTTP ceiling), a table, JSON and a plot.
- `python -m bench.compare`: two or more service variants side by side, medians of rounds.
- `python -m bench.load URL`: a Python load generator for load testers (no wrk needed).
"""
