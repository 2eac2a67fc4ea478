# pizzactl's own model server (`--model-server builtin`): TF Serving's REST API in Python,
# for machines where the tensorflow/serving image is not available.
#   pizzactl build --model-server builtin
#   docker build -f docker/modelserver.Dockerfile --build-arg MODEL_DIR=models/pizza/1 \
#     --build-arg MODEL_VERSION=1 -t pizzactl-model:dev .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The biggest layer first, so that neither the code nor the model reinstalls it. tensorflow-cpu
# has x86_64 wheels only; on aarch64 (Apple Silicon, Graviton) `pizzactl build` passes
# TENSORFLOW=tensorflow==2.21.0 (that wheel is the CPU build there); by hand, add
# --build-arg TENSORFLOW=tensorflow==2.21.0. LiteRT runs the artefact `pizzactl export`
# converted and checked (assets.extra/litert/), TensorFlow the rest.
ARG TENSORFLOW=tensorflow-cpu==2.21.0
ARG LITERT=ai-edge-litert==2.3.0
RUN pip install --no-cache-dir "${TENSORFLOW}" "${LITERT}" && rm -rf /root/.cache

COPY pyproject.toml docker/requirements.py /build/
RUN python /build/requirements.py modelserver /build/pyproject.toml > /build/requirements.txt \
 && pip install --no-cache-dir -r /build/requirements.txt \
 && rm -rf /build /root/.cache \
 && (useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pizzactl || true)

COPY src/pizzactl /app/pizzactl

ARG MODEL_DIR=models/pizza/1
ARG MODEL_VERSION=1
COPY ${MODEL_DIR} /models/pizza/${MODEL_VERSION}

# gRPC on TF Serving's port 8500 (Open Inference Protocol v2, grpc.health.v1.Health), REST on 8501.
ENV PYTHONPATH=/app \
    PIZZACTL_HOST=0.0.0.0 \
    PIZZACTL_MODELS_DIR=/models \
    PIZZACTL_GRPC_PORT=8500
USER 10001:10001
WORKDIR /tmp
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/v1/models/pizza', timeout=2)"]
CMD ["python", "-m", "pizzactl.serving.modelserver", "--models", "/models", "--host", "0.0.0.0", "--port", "8501"]
