"""Celery tasks: thin wrappers that take ids, run one kernel step, and record the end.

Imported only by worker processes (``include=["workers.tasks"]``); each task is
registered through ``xmlx_task``, the house decorator: explicit dotted name and queue,
late acks, redelivery when the worker dies, time limits, retries with backoff only
for the errors listed as transient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from workers import observe  # noqa: F401  (signal handlers: logs, metrics, tracing)
from workers.celery_app import (
    DEFAULT_QUEUE,
    GPU_QUEUE,
    TASK_DELIVER_WEBHOOKS,
    TASK_PREPARE_BATCH,
    TASK_PURGE,
    TASK_RECONCILE,
    TASK_RUN_CHUNK,
    TASK_SWEEP_PURGES,
    TASK_TRAIN,
    TRAIN_QUEUE,
    app,
    queue_depth,
    send_chunks,
    send_preparations,
    send_purges,
)
from workers.context import worker_context
from workers.metrics import RETRIES, WEBHOOK_DELIVERIES
from xmlx import jobs, purge, purge_sweep, webhooks
from xmlx.errors import XmlxError

log = logging.getLogger("xmlx.worker")
F = TypeVar("F", bound=Callable[..., Any])


class TransientError(Exception):
    """A failure that may pass if the task runs again later (storage or DB outage)."""


TRANSIENT_ERRORS = (TransientError, OperationalError, RedisConnectionError, ConnectionError)


def xmlx_task(name: str, queue: str, *, max_retries: int = 8) -> Callable[[F], Task]:
    def register(fn: F) -> Task:
        def run(self: Task, *args: Any) -> Any:
            try:
                return fn(*args)
            except XmlxError as exc:
                if exc.transient:
                    RETRIES.labels(name, exc.code).inc()
                    raise TransientError(f"{exc.code}: {exc.message}") from exc
                raise
            except TRANSIENT_ERRORS as exc:
                RETRIES.labels(name, type(exc).__name__).inc()
                raise

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return app.task(
            name=name,
            queue=queue,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            autoretry_for=TRANSIENT_ERRORS,
            retry_backoff=2,
            retry_backoff_max=60,
            retry_jitter=True,
            max_retries=max_retries,
        )(run)

    return register


@xmlx_task(TASK_RUN_CHUNK, GPU_QUEUE)
def run_chunk(chunk_id: str, kind: str) -> str:
    """A wake-up (`xmlx.messaging`): run the fairest chunks while there are some.

    `chunk_id` and `kind` name the chunk whose creation sent the message, for the logs;
    what runs is the database's choice (`workers.wakeup`). A retry after a transient
    failure is one more wake-up: the chunk was handed back without spending an attempt.
    """
    from workers.wakeup import run_wakeup

    statuses = run_wakeup(worker_context())
    log.info("wake-up done", extra={"sent_for": chunk_id, "kind": kind, "ran": len(statuses)})
    return ",".join(statuses) or "nothing"


@xmlx_task(TASK_TRAIN, TRAIN_QUEUE)
def train(chunk_id: str, kind: str) -> str:
    """A training wake-up: one slice of the fairest training chunk (`workers.training`).

    Under the `train_*` time limits (`xmlx.messaging`), not the 10-minute ones; a slice
    that ends on time checkpoints and sends its own continuation."""
    from workers.wakeup import run_training_wakeup

    status = run_training_wakeup(worker_context())
    log.info("training wake-up done", extra={"sent_for": chunk_id, "kind": kind})
    return status


@xmlx_task(TASK_PREPARE_BATCH, DEFAULT_QUEUE)
def prepare_batch(job_id: str) -> str:
    """List a big batch's source and insert its items; then send its chunks."""
    ctx = worker_context()
    done = jobs.prepare_batch(
        ctx.sessions,
        ctx.store,
        job_id,
        chunk_size=ctx.settings.chunk_size,
        max_items=ctx.settings.max_batch_items,
        max_slices=ctx.settings.prepare_slices_per_task,
        cost_limit=ctx.settings.max_job_forward_passes,
    )
    if done.chunk_ids:  # committed as queued by now
        send_chunks([(chunk_id, done.kind) for chunk_id in done.chunk_ids])
        jobs.mark_dispatched(ctx.sessions, done.chunk_ids)
    elif done.paused:  # this task's share is done: a fresh one goes on
        send_preparations([job_id])
    log.info("batch prepared", extra={"job_id": job_id, "state": done.state})
    return done.state


@xmlx_task(TASK_RECONCILE, DEFAULT_QUEUE)
def reconcile() -> int:
    """Send again the chunks whose message was lost or whose worker died, and the
    preparations whose task was lost."""
    ctx = worker_context()
    grace = ctx.settings.reconcile_grace_seconds
    depths = [queue_depth(GPU_QUEUE), queue_depth(TRAIN_QUEUE)]
    queued = None if None in depths else sum(d or 0 for d in depths)
    refs = jobs.reconcile(ctx.sessions, grace_seconds=grace, queued_messages=queued)
    send_chunks([(ref.chunk_id, ref.kind) for ref in refs])
    stalled = jobs.stalled_preparations(ctx.sessions, grace_seconds=grace)
    send_preparations([job_id for job_id, _kind in stalled])
    if refs or stalled:
        log.info(
            "reconciler re-enqueued", extra={"chunks": len(refs), "preparations": len(stalled)}
        )
    return len(refs) + len(stalled)


@xmlx_task(TASK_DELIVER_WEBHOOKS, DEFAULT_QUEUE, max_retries=0)
def deliver_webhooks() -> str:
    """POST the due rows of the webhook outbox (`xmlx.webhooks.delivery`). No retry of
    its own: the next beat tick is the retry, and each row keeps its own schedule."""
    ctx = worker_context()
    counts = webhooks.deliver_due(ctx.sessions, ctx.settings, ctx.owner)
    for outcome, n in counts.items():
        if n:
            WEBHOOK_DELIVERIES.labels(outcome).inc(n)
    if any(counts.values()):
        log.info("webhooks delivered", extra=counts)
    return ",".join(f"{k}={v}" for k, v in counts.items())


# A purge waiting for a cancelled job's last chunk asks again after this long.
PURGE_WAIT_SECONDS = 2.0


@xmlx_task(TASK_PURGE, DEFAULT_QUEUE)
def run_purge(purge_id: str) -> str:
    """Delete a purge's objects and rows for up to `purge_budget_seconds`, then send
    its continuation (`xmlx.purge`)."""
    ctx = worker_context()
    settings = ctx.settings
    outcome = purge.run_purge(
        ctx.sessions, ctx.store, purge_id,
        budget_seconds=settings.purge_budget_seconds, lease_seconds=settings.purge_lease_seconds,
    )  # fmt: skip
    if outcome == purge.PAUSED:
        send_purges([purge_id])
    elif outcome == purge.WAITING:
        send_purges([purge_id], countdown=PURGE_WAIT_SECONDS)
    log.info("purge step", extra={"purge_id": purge_id, "outcome": outcome})
    return outcome


@xmlx_task(TASK_SWEEP_PURGES, DEFAULT_QUEUE)
def sweep_purges() -> int:
    """Retention, stalled purges, orphan files and usage recounts (`xmlx.purge_sweep`)."""
    ctx = worker_context()
    outcome = purge_sweep.sweep(
        ctx.sessions, ctx.store,
        grace_seconds=ctx.settings.purge_grace_seconds,
        recount_every_seconds=ctx.settings.usage_recount_seconds,
    )  # fmt: skip
    send_purges(outcome.send)
    if outcome.send or outcome.orphan_files:
        log.info(
            "purge sweep",
            extra={
                "purges": len(outcome.send), "expired_jobs": outcome.expired_jobs,
                "orphan_files": outcome.orphan_files, "recounted": outcome.recounted,
            },
        )  # fmt: skip
    return len(outcome.send)
