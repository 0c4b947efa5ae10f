"""The model at run time: the onnxruntime wrapper (`runtime.categorizer`) and the model
file's identity, shared by the HTTP service (`service/`) and the batch scorer (`batch/`).

Imports only numpy and onnxruntime: never aiohttp, pyarrow or pyspark, so that each user
brings only its own dependencies. Nothing here imports `service/`, `batch/` or the
training package `categorizer/`.
"""
