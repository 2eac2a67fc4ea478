# The model on TensorFlow Serving (the default `--model-server tfserving`): the SavedModel
# baked into the official image, with server-side request batching.
#   pizzactl build
#   docker build -f docker/model.Dockerfile --build-arg MODEL_DIR=models/pizza/1 \
#     --build-arg MODEL_VERSION=1 -t pizzactl-model:dev .
ARG TFSERVING_IMAGE=tensorflow/serving:2.19.1
FROM ${TFSERVING_IMAGE}

ENV MODEL_NAME=pizza \
    MODEL_BASE_PATH=/models

COPY docker/batching_parameters.txt /models/batching_parameters.txt
ARG MODEL_DIR=models/pizza/1
ARG MODEL_VERSION=1
COPY ${MODEL_DIR} /models/pizza/${MODEL_VERSION}

# A numeric non-root user, so Kubernetes can check runAsNonRoot; the server writes nothing.
USER 65532:65532
EXPOSE 8500 8501
# Appended to the image's entrypoint (tensorflow_model_server --model_name=$MODEL_NAME ...).
CMD ["--enable_batching", "--batching_parameters_file=/models/batching_parameters.txt", "--rest_api_timeout_in_ms=30000"]
