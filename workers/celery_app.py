"""The Celery application: broker, queues, routing and delivery guarantees.

Importing this module must stay cheap and free of TensorFlow. Names and the
configuration live in `xmlx.messaging` (the API uses them from there). Task code
(which pulls in Keras) lives in ``workers.tasks`` and is imported only by worker
processes, after the fork (TensorFlow is not fork-safe).

Delivery is at-least-once by design (ARCHITECTURE.md, "Jobs"): late acks, redelivery
when a worker dies, prefetch 1 so a long chunk never holds a second message hostage.
The database, not the broker, decides whether work is still to be done.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from xmlx.messaging import (
    DEFAULT_QUEUE,
    GPU_QUEUE,
    TASK_DELIVER_WEBHOOKS,
    TASK_PREPARE_BATCH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_ROUTES,
    TASK_RUN_CHUNK,
    TASK_SWEEP_PURGES,
    TASK_TRAIN,
    TRAIN_QUEUE,
    configure,
    producer_app,
    send_preparation,
    send_purge,
    send_wakeups,
)
from xmlx.settings import Settings, get_settings

__all__ = [
    "DEFAULT_QUEUE",
    "GPU_QUEUE",
    "TASK_DELIVER_WEBHOOKS",
    "TASK_PREPARE_BATCH",
    "TASK_PURGE",
    "TASK_RECONCILE",
    "TASK_ROUTES",
    "TASK_RUN_CHUNK",
    "TASK_SWEEP_PURGES",
    "TASK_TRAIN",
    "TRAIN_QUEUE",
    "app",
    "configure",
    "create_celery",
    "queue_depth",
    "send_chunks",
    "send_preparations",
    "send_purges",
]


def create_celery(settings: Settings | None = None) -> Celery:
    """The worker's Celery app bound to ``settings`` (the process settings by default)."""
    return producer_app(settings or get_settings(), include=["workers.tasks"])


app = create_celery()


def queue_depth(queue: str = GPU_QUEUE) -> int | None:
    """Messages waiting in ``queue`` (the Redis list Celery's transport uses), or None
    when the broker cannot be asked."""
    try:
        with app.connection_for_read() as connection:
            return int(connection.default_channel.client.llen(queue))
    except (OSError, RedisError, KombuOperationalError):
        return None


def send_chunks(chunks: list[tuple[str, str]]) -> None:
    """Wake-ups for ``(chunk_id, job kind)`` pairs (see `xmlx.messaging`)."""
    send_wakeups(app, chunks)


def send_preparations(jobs: list[str]) -> None:
    """Enqueue one ``prepare_batch`` message per preparing job id (after its commit)."""
    for job_id in jobs:
        send_preparation(app, job_id)


def send_purges(purge_ids: list[str], countdown: float | None = None) -> None:
    """One ``purge`` message per purge id (after its commit)."""
    for purge_id in purge_ids:
        send_purge(app, purge_id, countdown=countdown)
