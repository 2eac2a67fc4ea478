# The gateway: validates and fetches images, calls the model server over TF Serving REST.
# No TensorFlow in here (the final image stays well under 250 MB).
#   pizzactl build                                       # builds this with a content tag
#   docker build -f docker/gateway.Dockerfile -t pizzactl-gateway:dev .   # from a clone
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies before the source: this layer only changes when pyproject.toml does.
COPY pyproject.toml docker/requirements.py /build/
RUN python /build/requirements.py gateway /build/pyproject.toml > /build/requirements.txt \
 && pip install --no-cache-dir -r /build/requirements.txt \
 && rm -rf /build /root/.cache \
 && (useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pizzactl || true)

COPY src/pizzactl /app/pizzactl

ENV PYTHONPATH=/app \
    PIZZACTL_HOST=0.0.0.0 \
    PIZZACTL_PORT=9696 \
    PIZZACTL_MODEL_URL=http://pizzactl-model:8501
USER 10001:10001
WORKDIR /tmp
EXPOSE 9696
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9696/healthz', timeout=2)"]
CMD ["python", "-m", "pizzactl.serving.gateway", "--host", "0.0.0.0", "--port", "9696"]
