"""Task and queue names, the Celery producer configuration, and sending wake-ups.

The kernel owns these so that the API depends on `xmlx` alone (ARCHITECTURE.md,
dependency direction): it sends messages by task name through `producer_app`, never
importing worker code or TensorFlow; `workers.celery_app` builds the worker app on the
same configuration.

Messages are wake-ups, not assignments: a `run_chunk` message tells a worker "there is
work", and the worker asks the database for the next chunk chosen fairly across tenants
(`xmlx.jobs.claim_next`). The chunk id a message carries is the one whose creation (or
recovery) sent it: kept for logs and for the reconciler's count of queued chunks vs.
messages, but it does not decide what runs. One message is sent per chunk, so every
chunk has a wake-up, and the number of messages stays bounded by the number of chunks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from celery import Celery
from kombu import Queue

from xmlx.logs import current_request_id
from xmlx.settings import Settings

GPU_QUEUE = "gpu"
# Training: hours long, so under its own time limits (`train_*` settings), never
# behind or in front of explanation chunks; a GPU worker usually serves both queues.
TRAIN_QUEUE = "train"
DEFAULT_QUEUE = "default"
QUEUES = (GPU_QUEUE, TRAIN_QUEUE, DEFAULT_QUEUE)

TASK_TRAIN = "xmlx.train"
TRAIN_KIND = "train"  # `xmlx.models.JobKind.TRAIN`
TASK_RUN_CHUNK = "xmlx.run_chunk"
TASK_RECONCILE = "xmlx.reconcile"
TASK_PREPARE_BATCH = "xmlx.prepare_batch"
TASK_DELIVER_WEBHOOKS = "xmlx.deliver_webhooks"
TASK_PURGE = "xmlx.purge"
TASK_SWEEP_PURGES = "xmlx.sweep_purges"

# Message headers (task.request attributes on the worker): the request that caused the
# message (xmlx.logs) and when it was sent (the worker's queue-wait histogram).
HEADER_REQUEST_ID = "x_request_id"
HEADER_SENT_AT = "x_sent_at"

TASK_ROUTES = {
    TASK_TRAIN: {"queue": TRAIN_QUEUE},
    TASK_RUN_CHUNK: {"queue": GPU_QUEUE},
    TASK_RECONCILE: {"queue": DEFAULT_QUEUE},
    # Listing and inserting is database and S3 work: never behind GPU chunks.
    TASK_PREPARE_BATCH: {"queue": DEFAULT_QUEUE},
    # Network waits on other people's servers: never behind (or in front of) GPU work.
    TASK_DELIVER_WEBHOOKS: {"queue": DEFAULT_QUEUE},
    # Deleting is listing, DeleteObjects and row batches: default queue too.
    TASK_PURGE: {"queue": DEFAULT_QUEUE},
    TASK_SWEEP_PURGES: {"queue": DEFAULT_QUEUE},
}


def configure(app: Celery, settings: Settings) -> None:
    """Apply the service's delivery, routing and resource settings to ``app``."""
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        # A message still reserved after this long is delivered again; it must exceed
        # the hard time limit or every long task would run twice (Settings checks it).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_memory_per_child=settings.worker_max_memory_kib,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_hard_time_limit_seconds,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=tuple(Queue(name) for name in QUEUES),
        task_routes=TASK_ROUTES,
        # A training task runs one slice (`train_slice_seconds` of epochs, then it
        # checkpoints and a fresh task continues); the limits bound one slice plus its
        # last epoch. A copy of a train wake-up delivered again past the visibility
        # timeout finds the chunk leased and returns: the database decides, not Redis.
        task_annotations={
            TASK_TRAIN: {
                "soft_time_limit": settings.train_soft_time_limit_seconds,
                "time_limit": settings.train_hard_time_limit_seconds,
            }
        },
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule={
            "reconcile": {
                "task": TASK_RECONCILE,
                "schedule": float(settings.reconcile_interval_seconds),
                "options": {"queue": DEFAULT_QUEUE, "expires": settings.reconcile_interval_seconds},
            },
            # The outbox is the truth: a tick lost or expired is caught up by the next.
            "deliver-webhooks": {
                "task": TASK_DELIVER_WEBHOOKS,
                "schedule": float(settings.webhook_interval_seconds),
                "options": {"queue": DEFAULT_QUEUE, "expires": settings.webhook_interval_seconds},
            },
            "sweep_purges": {
                "task": TASK_SWEEP_PURGES,
                "schedule": float(settings.purge_sweep_interval_seconds),
                "options": {
                    "queue": DEFAULT_QUEUE,
                    "expires": settings.purge_sweep_interval_seconds,
                },
            },
        },
    )


def producer_app(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """A Celery app bound to ``settings``; ``include`` names task modules (workers only)."""
    app = Celery("xmlx", include=list(include))
    configure(app, settings)
    return app


def message_headers() -> dict[str, Any]:
    headers: dict[str, Any] = {HEADER_SENT_AT: time.time()}
    request_id = current_request_id()
    if request_id is not None:
        headers[HEADER_REQUEST_ID] = request_id
    return headers


def _batched(producer: Any) -> AbstractContextManager[Any]:
    """kombu >= 5.6 pipelines a batch of publishes (one Redis round trip per batch)."""
    batch = getattr(producer, "batch", None)
    return batch() if batch is not None else nullcontext()


def send_wakeups(
    app: Celery,
    chunks: Sequence[tuple[str, str]],
    *,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """One wake-up per ``(chunk_id, job kind)``, by task name, in one batch:
    `xmlx.train` on the `train` queue for training chunks, `run_chunk` on `gpu` else.

    Call only after the transaction that created the chunks has committed, or a fast
    worker could look for rows that are not there yet. Raises what the broker raised.
    """
    with app.producer_or_acquire() as producer, _batched(producer):
        for chunk_id, kind in chunks:
            training = kind == TRAIN_KIND
            app.send_task(
                TASK_TRAIN if training else TASK_RUN_CHUNK,
                args=[chunk_id, kind],
                queue=TRAIN_QUEUE if training else GPU_QUEUE,
                producer=producer,
                retry_policy=retry_policy,
                headers=message_headers(),
            )


def send_preparation(
    app: Celery, job_id: str, *, retry_policy: dict[str, Any] | None = None
) -> None:
    """The `prepare_batch` message of a preparing job (after its commit)."""
    app.send_task(
        TASK_PREPARE_BATCH,
        args=[job_id],
        queue=DEFAULT_QUEUE,
        retry_policy=retry_policy,
        headers=message_headers(),
    )


def send_purge(
    app: Celery,
    purge_id: str,
    *,
    countdown: float | None = None,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """The `purge` message of a purge record (after its commit)."""
    app.send_task(
        TASK_PURGE,
        args=[purge_id],
        queue=DEFAULT_QUEUE,
        countdown=countdown,
        retry_policy=retry_policy,
        headers=message_headers(),
    )
