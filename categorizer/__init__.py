"""Training side of the Elo7 product categorizer.

Imports neither aiohttp nor the ``service`` package: serving reads only the
exported ONNX file.
"""
