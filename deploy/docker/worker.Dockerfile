# syntax=docker/dockerfile:1.7
# xmlx worker image: one Celery worker process per GPU on the `gpu` queue; the same
# image, without a GPU, runs the `default` queue worker and beat (both import Keras).
# TensorFlow comes as the official `tensorflow[and-cuda]` wheel, which carries CUDA and
# cuDNN builds matched to it; the host needs only the NVIDIA driver and the NVIDIA
# Container Toolkit. (The tensorflow/tensorflow:*-gpu images work too, but ship another
# Python than the API image and ~2 GB of tooling we do not use.)
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t xmlx-worker:local .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TENSORFLOW_VERSION=2.21.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Built in /app, the path it runs from: the editable install below points there.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/docker/requirements.py /tmp/requirements.py
# pyproject pins tensorflow-cpu on Linux x86_64; installing both wheels would let the CPU
# one overwrite the GPU one, so it is left out here and the CUDA build installed instead.
RUN python /tmp/requirements.py pyproject.toml --exclude tensorflow tensorflow-cpu \
        > /tmp/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" \
        -r /tmp/requirements.txt
COPY . .
# Editable (-e): xmlx.migrate finds alembic.ini and migrations/ next to the sources.
RUN /opt/venv/bin/pip install --no-deps -e .
# xmlcore never downloads ImageNet weights (and the workers have no internet egress): it
# loads them from the Keras cache under KERAS_HOME. Bake the bases you fine-tune, e.g.
#   --build-arg IMAGENET_WEIGHTS="VGG16 MobileNetV2"   (keras.applications names)
ARG IMAGENET_WEIGHTS=""
ENV KERAS_HOME=/opt/keras
RUN mkdir -p /opt/keras/models \
    && for base in ${IMAGENET_WEIGHTS}; do \
        CUDA_VISIBLE_DEVICES="" KERAS_BACKEND=tensorflow /opt/venv/bin/python -c \
            "import sys, keras; getattr(keras.applications, sys.argv[1])(weights='imagenet', include_top=False)" \
            "$base" || exit 1; \
    done

FROM python:${PYTHON_VERSION}-slim-bookworm
# tini reaps zombies and hands SIGTERM to Celery, whose answer is a WARM shutdown: stop
# taking messages, finish the running chunk, exit. That is what makes scale-in lossless,
# and why the command below starts Celery itself rather than through `xmlx worker`: a
# wrapper that waits on Celery as a child dies on SIGTERM, and the container goes down
# with the chunk. Same arguments as `xmlx worker --queues gpu,train`.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 xmlx \
    && useradd --system --uid 10001 --gid xmlx --home-dir /app --shell /usr/sbin/nologin xmlx
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/keras /opt/keras
WORKDIR /app
COPY --from=build --chown=root:root /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_BACKEND=tensorflow \
    KERAS_HOME=/opt/keras \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp
USER 10001:10001
# `inspect ping` is answered by the worker's main process, so it works while a chunk runs
# in the pool child. The start period covers TensorFlow and CUDA start-up.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.celery_app inspect ping --timeout 20 -d \"celery@$(hostname)\""]
ENTRYPOINT ["tini", "--"]
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "gpu,train", "--concurrency", "1", \
     "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
