"""The Celery application: broker, queues, routing and delivery guarantees.

Importing this module must stay cheap and free of TensorFlow: the API imports it to
send tasks by name. Task code (which pulls in Keras) lives in ``workers.tasks`` and is
imported only by worker processes, after the fork (TensorFlow is not fork-safe).

Delivery is at-least-once by design (ARCHITECTURE.md, "Jobs"): late acks, redelivery
when a worker dies, prefetch 1 so a long chunk never holds a second message hostage.
The database, not the broker, decides whether work is still to be done.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from xmlx.settings import Settings, get_settings

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"

TASK_TRAIN = "xmlx.train"
TASK_RUN_CHUNK = "xmlx.run_chunk"
TASK_RECONCILE = "xmlx.reconcile"
TASK_PREPARE_BATCH = "xmlx.prepare_batch"

TASK_ROUTES = {
    TASK_TRAIN: {"queue": GPU_QUEUE},
    TASK_RUN_CHUNK: {"queue": GPU_QUEUE},
    TASK_RECONCILE: {"queue": DEFAULT_QUEUE},
    # Listing and inserting is database and S3 work: never behind GPU chunks.
    TASK_PREPARE_BATCH: {"queue": DEFAULT_QUEUE},
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
        task_queues=(Queue(GPU_QUEUE), Queue(DEFAULT_QUEUE)),
        task_routes=TASK_ROUTES,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule={
            "reconcile": {
                "task": TASK_RECONCILE,
                "schedule": float(settings.reconcile_interval_seconds),
                "options": {"queue": DEFAULT_QUEUE, "expires": settings.reconcile_interval_seconds},
            }
        },
    )


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app bound to ``settings`` (the process settings by default)."""
    app = Celery("xmlx", include=["workers.tasks"])
    configure(app, settings or get_settings())
    return app


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
    """Enqueue one ``run_chunk`` message per ``(chunk_id, job kind)``, by task name.

    Call only after the transaction that created the chunks has committed, or a fast
    worker could look for rows that are not there yet.
    """
    with app.producer_or_acquire() as producer:  # one connection for a big batch's chunks
        for chunk_id, kind in chunks:
            app.send_task(TASK_RUN_CHUNK, args=[chunk_id, kind], queue=GPU_QUEUE, producer=producer)


def send_preparations(jobs: list[str]) -> None:
    """Enqueue one ``prepare_batch`` message per preparing job id (after its commit)."""
    for job_id in jobs:
        app.send_task(TASK_PREPARE_BATCH, args=[job_id], queue=DEFAULT_QUEUE)
