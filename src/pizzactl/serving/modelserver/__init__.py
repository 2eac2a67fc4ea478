"""A small TF Serving look-alike: the SavedModel behind TF Serving's REST API, in one process.

What the gateway (or any TF Serving client) sees is the same as with the tensorflow/serving
image: `GET /v1/models/<name>`, `GET /v1/models/<name>/metadata`,
`POST /v1/models/<name>[/versions/N]:predict` with row (`instances`) or columnar (`inputs`)
requests, and errors as `{"error": "..."}`. Like TF Serving it serves the highest version and
swaps versions without a restart (`server.py`), batches concurrent requests (`batching.py`,
TF Serving's `--enable_batching`), and starts even when no model exists yet.

  app.py       the routes (Starlette) and `main()`
  server.py    which versions are served, hot reload, status / metadata / predict
  versions.py  the version policy and labels (TF Serving's model config file)
  rest.py      TF Serving's request and response JSON
  batching.py  the dynamic batcher, and isolate_failures
  runtimes.py  what runs a batch (TensorFlow)

TensorFlow is imported only when a model is loaded, so `--help` is instant, and the gateway
imports `batching` without pulling in the server. Run it with
`python -m pizzactl.serving.modelserver --models models --port 8501`.
"""
