# syntax=docker/dockerfile:1.7
# xmlx API image: FastAPI under uvicorn, plus the `migrate` one-shot (`xmlx db upgrade`).
# It must NOT contain TensorFlow: the API only enqueues tasks by
# name and never imports it, and leaving it out saves ~1.5 GB and a class of CVEs.
# Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t xmlx-api:local .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Built in /app, the path it runs from: the editable install below points there.
WORKDIR /app
# Dependencies first, from pyproject alone, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
COPY deploy/docker/requirements.py /tmp/requirements.py
RUN python /tmp/requirements.py pyproject.toml --exclude tensorflow tensorflow-cpu \
        > /tmp/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY . .
# --no-deps: pyproject pins tensorflow-cpu on Linux; the list above already has the rest.
# Editable (-e): xmlx.migrate finds alembic.ini and migrations/ next to the package
# sources, which a site-packages install would leave behind.
# The last command fails the build if TensorFlow slipped in through a transitive dependency.
RUN /opt/venv/bin/pip install --no-deps -e . \
    && /opt/venv/bin/python -c \
        "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 xmlx \
    && useradd --system --uid 10001 --gid xmlx --home-dir /app --shell /usr/sbin/nologin xmlx
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build --chown=root:root /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["xmlx"]
# `xmlx api` binds 127.0.0.1 unless told otherwise.
CMD ["api", "--host", "0.0.0.0"]
