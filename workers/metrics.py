"""The workers' Prometheus metrics, written by every pool process, exported by one.

Celery's prefork pool runs tasks in child processes that come and go, so each metric
lives in prometheus_client's multiprocess mode: every process writes its values to
files in `PROMETHEUS_MULTIPROC_DIR`, and one HTTP exporter sums them at scrape
(`xmlx.metrics_export`). `xmlx worker --metrics-port N` sets the directory and starts
the exporter in the Celery parent (or, with `--gpus`, in the supervisor, which then
exports every GPU worker's children together). Without that variable the metrics are
kept in memory and nobody reads them: the workers run the same either way.

Names (docs/DEPLOY.md, deploy/grafana/xmlx.json; a test checks the dashboard uses only
names exported here or by the API):

- `xmlx_worker_items_total{kind,state,code}`: items recorded by this worker's lease
  (state `succeeded`, or `failed` with the item's error code); `rate()` is items/s.
- `xmlx_worker_forward_passes_total{kind,method}`: forward passes, estimated per image
  from the method's parameters (`xmlcore.param_costs`; adaptive LIME may stop sooner).
- `xmlx_worker_batch_seconds{kind}`: one batch of images: fetch, compute, persist.
- `xmlx_worker_gpu_memory_bytes{pid}`: accelerator memory in use, when the backend
  can tell (JAX, PyTorch, TensorFlow on a GPU); absent on a CPU.
- `xmlx_worker_chunks_total{kind,status}`, `xmlx_worker_lease_losses_total{kind}`.
- `xmlx_worker_retries_total{task,error}`: transient failures that made a task retry.
- `xmlx_worker_queue_wait_seconds{queue}`: from a message's send to its task's start.
- `xmlx_worker_webhook_deliveries_total{outcome}`: webhook attempts (`delivered`,
  `retry`, `failed` = given up), from the `xmlx.deliver_webhooks` task.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram

from xmlx.metrics_export import MULTIPROC_ENV

if os.environ.get(MULTIPROC_ENV):  # a container's first start: the folder may not exist
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

ITEMS = Counter(
    "xmlx_worker_items",
    "Items recorded by a worker, by job kind, state and error code",
    ["kind", "state", "code"],
)
FORWARD_PASSES = Counter(
    "xmlx_worker_forward_passes",
    "Forward passes run (estimated per image from the method's parameters)",
    ["kind", "method"],
)
BATCH_SECONDS = Histogram(
    "xmlx_worker_batch_seconds",
    "Seconds per batch of images (fetch, compute, persist)",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
GPU_MEMORY = Gauge(
    "xmlx_worker_gpu_memory_bytes",
    "Accelerator memory in use by a worker process",
    ["pid"],
    multiprocess_mode="liveall",
)
CHUNKS = Counter("xmlx_worker_chunks", "Chunks a worker ran, by end status", ["kind", "status"])
LEASE_LOSSES = Counter(
    "xmlx_worker_lease_losses",
    "Chunks a worker stopped because another worker took over its expired lease",
    ["kind"],
)
RETRIES = Counter(
    "xmlx_worker_retries", "Tasks retried after a transient failure", ["task", "error"]
)
QUEUE_WAIT = Histogram(
    "xmlx_worker_queue_wait_seconds",
    "Seconds from a message's send to its task's start",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)

WEBHOOK_DELIVERIES = Counter(
    "xmlx_worker_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, failed: given up)",
    ["outcome"],
)

# Every metric name the workers export (with the suffixes Prometheus adds).
METRICS = (
    ITEMS, FORWARD_PASSES, BATCH_SECONDS, GPU_MEMORY, CHUNKS, LEASE_LOSSES, RETRIES, QUEUE_WAIT,
    WEBHOOK_DELIVERIES,
)  # fmt: skip


def record_gpu_memory(in_use: int | None) -> None:
    if in_use is not None:
        GPU_MEMORY.labels(str(os.getpid())).set(in_use)


def exported_names() -> set[str]:
    """The sample names these metrics produce (`_total`, `_bucket`, ... included)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for metric in METRICS:
        for family in metric.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names
