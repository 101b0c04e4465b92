"""Shared set-up of the service benchmarks (``service_overhead.py``, ``scale.py``).

Starts nothing itself: given a running embedded stack it creates an API key, uploads a
generated dishes data set through presigned URLs (the explained images are held out of
training), trains a model through the service, and times explanation jobs from submit
to final state. ``load_service_model`` reads the trained artifact back from the stack's
S3 with the worker's own loader, so an in-process run explains with the very model the
service uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from unittest import mock

import psutil

from xmlx.client import Client, JobStatus
from xmlx.demo_service import create_api_key
from xmlx.settings import Settings
from xmlx.stack import Stack

IMAGES_PREFIX = "bench/images/"
TARGET = {"kind": "top_k", "k": 1}


def one_thread_env() -> dict[str, str]:
    """Environment that keeps TensorFlow, oneDNN and numpy's BLAS on one thread.

    TF 2.21 reads ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` when it builds
    its thread pools (both names are in ``libtensorflow_framework.so.2``), so they must
    be set before TensorFlow is imported: in a worker's environment, not at run time.
    """
    names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
             "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # fmt: skip
    return dict.fromkeys(names, "1")


@dataclass
class Prepared:
    client: Client
    dataset_id: str
    model_id: str
    keys: list[str]  # the explained (held-out) image keys
    pngs: dict[str, bytes]  # key -> the exact PNG bytes uploaded
    train_seconds: float


def prepare(
    stack: Stack, *, preset: str, image_size: int, n_items: int, epochs: int, seed: int = 0
) -> Prepared:
    """Upload a generated data set, train on all but ``n_items`` images, wait for it."""
    from xmlcore.datasets import generate_dishes
    from xmlcore.images import encode_png
    from xmlcore.labels import manifest_to_csv

    data = generate_dishes(preset, seed=seed, image_size=image_size)
    space = data.label_space
    if n_items >= space.n_images:
        raise SystemExit(f"--items must be below the preset's {space.n_images} images")
    client = Client(stack.api_url, create_api_key(stack, "bench"), timeout=120.0)
    pngs = {key: encode_png(data.images[i]) for i, key in enumerate(space.image_keys)}
    client.upload({IMAGES_PREFIX + key: png for key, png in pngs.items()})
    n_train = space.n_images - n_items
    train_keys = list(space.image_keys[:n_train])
    labels = [space.labels_of(i) for i in range(n_train)]
    manifest = manifest_to_csv(train_keys, labels)
    client.upload({"bench/manifest.csv": manifest}, content_type="text/csv")
    dataset = client.create_dataset("bench", IMAGES_PREFIX, "bench/manifest.csv")
    started = time.perf_counter()
    created = client.train(
        dataset["id"], "bench", epochs=epochs, seed=seed, image_size=[image_size, image_size]
    )
    job = client.wait(created["job"]["id"], timeout=3600, poll=0.5)
    if job.state != "succeeded":
        raise RuntimeError(f"training ended {job.state}: {job.raw}")
    keys = list(space.image_keys[n_train:])
    return Prepared(
        client, dataset["id"], created["model"]["id"], keys, {k: pngs[k] for k in keys},
        time.perf_counter() - started,
    )  # fmt: skip


@contextmanager
def stack_environment(stack: Stack) -> Iterator[None]:
    """The stack's ``XMLX_*`` environment, for this process only while inside."""
    with mock.patch.dict(os.environ, stack.env):
        yield


def service_settings(stack: Stack) -> Settings:
    with stack_environment(stack):
        return Settings()


def load_service_model(stack: Stack, model_id: str) -> Any:
    """The trained model, fetched from the stack's S3 by the worker's own loader."""
    from workers.context import build_context

    return build_context(service_settings(stack)).model(model_id)


@dataclass(frozen=True)
class JobRun:
    status: JobStatus
    wall_s: float  # submit to the client seeing the final state
    span_s: float  # server side: first chunk claimed to last item recorded
    queue_s: float  # server side: job created to first chunk claimed


def run_job(
    prepared: Prepared, keys: Sequence[str], params: Mapping[str, Any], *, poll: float
) -> JobRun:
    """Submit one explanation job of ``keys``, wait for it, and time it."""
    client = prepared.client
    started = time.perf_counter()
    job = client.explain(
        prepared.model_id, keys, dataset_id=prepared.dataset_id, target=TARGET,
        params=dict(params),
    )  # fmt: skip
    status = client.wait(job.id, timeout=3600, poll=poll)
    wall = time.perf_counter() - started
    if status.state != "succeeded":
        raise RuntimeError(f"job {job.id} ended {status.state}: {status.raw}")
    created, begun, ended = (
        _when(status.raw[k]) for k in ("created_at", "started_at", "finished_at")
    )
    return JobRun(status, wall, (ended - begun).total_seconds(), (begun - created).total_seconds())


def stack_pids(stack: Stack) -> dict[str, int]:
    """Process ids of the stack's parts by name (api, worker1, beat, s3, redis)."""
    pids = {name: process.pid for name, process in stack.processes.items()}
    for name, part in (("s3", stack.s3), ("redis", stack.redis)):
        process = getattr(part, "process", None)
        if process is not None:
            pids[name] = process.pid
    return pids


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the stack, its child
    processes included (a Celery worker computes in its pool child), and by this
    process (``client``). Differences of two readings show where a run's CPU went,
    which the other load on a shared machine disturbs far less than wall time."""
    used = {"client": _cpu(psutil.Process())}
    for name, pid in stack_pids(stack).items():
        try:
            root = psutil.Process(pid)
            used[name] = sum(_cpu(p) for p in [root, *root.children(recursive=True)])
        except psutil.Error:  # a part that has stopped
            used[name] = 0.0
    return used


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:  # the process ended between listing and reading
        return 0.0
    return float(times.user + times.system)


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
