# The trainer: `pizzactl train` with TensorFlow inside (the [train] extra), for
# `pizzactl train --on docker|kind|CONTEXT`. Its entrypoint is `pizzactl train`, so any train
# flag works as the container's arguments.
#   pizzactl build --trainer [--gpu]                     # builds this with a content tag
#   docker build -f docker/trainer.Dockerfile -t pizzactl-trainer:dev .   # from a clone
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The same first layers as modelserver.Dockerfile, so Docker builds the TensorFlow layer once
# for both images. --gpu passes TENSORFLOW="tensorflow[and-cuda]==2.21.0": CUDA and cuDNN come
# from pip, the node (or the NVIDIA container toolkit) supplies only the driver.
ARG TENSORFLOW=tensorflow-cpu==2.21.0
RUN pip install --no-cache-dir "${TENSORFLOW}" && rm -rf /root/.cache

COPY pyproject.toml docker/requirements.py /build/
RUN python /build/requirements.py trainer /build/pyproject.toml > /build/requirements.txt \
 && pip install --no-cache-dir -r /build/requirements.txt \
 && rm -rf /build /root/.cache \
 && (useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pizzactl || true) \
 && mkdir -p /cache && chmod 1777 /cache \
 && printf '#!/bin/sh\nexec python -m pizzactl "$@"\n' > /usr/local/bin/pizzactl \
 && chmod 755 /usr/local/bin/pizzactl

COPY src/pizzactl /app/pizzactl

# Nothing is written outside /tmp, /cache and the mounted output: the root filesystem can be
# read-only. /cache (a named volume on Docker, the PVC on a cluster) keeps Keras weights and
# the feature cache between runs; a new Docker volume copies this directory's mode 1777.
ENV PYTHONPATH=/app \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/cache/keras \
    PIZZACTL_CACHE_DIR=/cache
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["pizzactl", "train"]
