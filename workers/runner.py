"""Running one chunk of an explanation or prediction job.

The steps follow ARCHITECTURE.md, "Jobs": lease the chunk (items already finished by
an earlier attempt are not handed out again), then per batch of images: heartbeat
(stop on cancel or a lost lease), fetch and decode (a bad image fails alone, with its
code), call ``xmlcore.batch`` once for the whole batch, write artifacts under
deterministic keys, record the batch's items in one transaction (first write wins).
The batch's object-store round trips run in parallel. A transient storage or database
failure propagates so the task retries; the lease makes the retry pick up where this
attempt stopped. A storage outage is waited out inside the lease instead
(backoff, heartbeats, only the items not yet recorded are tried again): a Celery retry
would claim the chunk again, and each claim spends one of `max_attempts_per_chunk`,
so a 30 s outage would fail whole chunks (`chunk.max_attempts`) that nothing was
wrong with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from workers.context import WorkerContext
from xmlcore.batch import ImageReport, explain_images, predict_images
from xmlcore.errors import XmlcoreError
from xmlcore.images import decode_image
from xmlcore.methods import parse_target
from xmlcore.param_costs import check_image_fit, max_batch_size
from xmlcore.params import parse_params
from xmlx import jobs
from xmlx.keys import item_artifact_key
from xmlx.models import Job, JobKind
from xmlx.storage import StorageError

log = logging.getLogger("xmlx.worker")
STORAGE_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0)
# Object-store round trips of a batch (image fetches, artifact puts) run this many at a
# time: one after another they were ~20 % of a batch's time (bench/service_overhead.py).
IO_THREADS = 8
# Methods whose batches are forward passes only: gradients need several times the memory.
FORWARD_ONLY_METHODS = frozenset({"lime", "occlusion"})


@dataclass(frozen=True)
class ChunkOutcome:
    status: str  # claimed status, or "done", "cancelled", "lease_lost"
    recorded: int = 0


def run_chunk(ctx: WorkerContext, chunk_id: str) -> ChunkOutcome:
    """Do whatever is left of ``chunk_id``; safe to call again for the same chunk."""
    settings = ctx.settings
    claim = jobs.claim_chunk(
        ctx.sessions,
        chunk_id,
        ctx.owner,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts_per_chunk,
    )
    if not claim.claimed or claim.job is None:
        return ChunkOutcome(claim.status.value)
    job = claim.job
    try:
        model = ctx.model(str(job.model_id))
    except (StorageError, XmlcoreError) as exc:
        if getattr(exc, "transient", False):
            raise
        jobs.fail_job(ctx.sessions, job.id, exc.code, exc.message)
        return ChunkOutcome("model_failed")
    problem = _bad_parameters(job, model)
    if problem is not None:  # no image could run: fail the job, not each item
        jobs.fail_job(ctx.sessions, job.id, "job.bad_parameters", problem)
        return ChunkOutcome("bad_parameters")
    recorded = 0
    batch_size = max(1, settings.images_per_batch)
    for start in range(0, len(claim.items), batch_size):
        stopped = _keep_lease(ctx, chunk_id)
        if stopped is not None:
            return ChunkOutcome(stopped, recorded)
        batch = [item.item_key for item in claim.items[start : start + batch_size]]
        stopped = _run_batch_through_outages(ctx, chunk_id, job, model, batch)
        if stopped is not None:
            return ChunkOutcome(stopped, recorded)
        recorded += len(batch)
    jobs.complete_chunk(ctx.sessions, chunk_id, ctx.owner)
    return ChunkOutcome("done", recorded)


def _keep_lease(ctx: WorkerContext, chunk_id: str) -> str | None:
    """Heartbeat; None to go on, else why to stop ("lease_lost" or "cancelled")."""
    beat = jobs.heartbeat(
        ctx.sessions, chunk_id, ctx.owner, lease_seconds=ctx.settings.lease_seconds
    )
    if not beat.alive:
        return "lease_lost"
    if beat.cancel_requested:
        jobs.release_chunk(ctx.sessions, chunk_id, ctx.owner)
        return "cancelled"
    return None


def _run_batch_through_outages(
    ctx: WorkerContext, chunk_id: str, job: Job, model: Any, item_keys: Sequence[str]
) -> str | None:
    """Run one batch; while storage is unavailable, back off (keeping the lease) and
    try the items not yet recorded again. Gives up (raises, so the task retries) after
    half the task's soft time limit. Returns like `_keep_lease`."""
    pending = list(item_keys)
    deadline = time.monotonic() + ctx.settings.task_soft_time_limit_seconds / 2
    attempt = 0
    while True:
        try:
            _run_batch(ctx, job, model, pending)
            return None
        except StorageError as exc:
            if not exc.transient or time.monotonic() > deadline:
                raise
        backoff = STORAGE_BACKOFF_SECONDS[min(attempt, len(STORAGE_BACKOFF_SECONDS) - 1)]
        time.sleep(min(backoff, ctx.settings.lease_seconds / 3))  # the lease must outlive it
        attempt += 1
        stopped = _keep_lease(ctx, chunk_id)
        if stopped is not None:
            return stopped


def _run_batch(ctx: WorkerContext, job: Job, model: Any, pending: list[str]) -> None:
    """Explain the `pending` items; each one recorded is removed from the list, so a
    batch interrupted by a storage outage is resumed, not redone."""
    started = time.perf_counter()
    images, good_keys = _fetch_images(ctx, job, model.image_size, pending)
    if not good_keys:
        return
    compute = _compute_fn(job, model, ctx.forward_batch_size(model))
    try:
        reports = compute(np.stack(images))
        pairs = list(zip(good_keys, reports, strict=True))
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # any deterministic failure: see _explain_failure
        code, message = _explain_failure(exc)
        # The same images with the same parameters would fail the same way again: each
        # item fails with the code; nothing is retried.
        for key in good_keys:
            jobs.record_item_failure(ctx.sessions, job.id, key, code=code, message=message)
            pending.remove(key)
        return
    seconds = (time.perf_counter() - started) / max(len(good_keys), 1)
    _persist(ctx, job, pairs, {"seconds": round(seconds, 4)}, pending)


def _explain_failure(exc: Exception) -> tuple[str, str]:
    """The item code of an exception raised by the explain call. Not only
    ``XmlcoreError``: a ``ValueError``, ``TypeError`` or ``MemoryError`` from deep in
    numpy or Keras is as deterministic, and re-raising it made Celery redeliver the
    chunk until ``chunk.max_attempts``, holding a GPU worker all that time. Storage
    and database errors cannot come from here (the call is pure xmlcore)."""
    if isinstance(exc, XmlcoreError):
        return exc.code, exc.message
    log.exception("explain call failed", exc_info=exc)
    if isinstance(exc, MemoryError):
        return "explain.out_of_memory", "the explanation ran out of memory; lower batch_size"
    return "explain.failed", f"{type(exc).__name__}: {exc}"[:500]


def _bad_parameters(job: Job, model: Any) -> str | None:
    """Why this job's method, parameters or target cannot run on ``model``, or None.

    The API checks the same schema at submit; this catches what it could not (a job
    submitted before a bound was added, a model whose image size differs)."""
    if job.kind != JobKind.EXPLAIN:
        return None
    params = job.params
    try:
        method = str(params.get("method", "lime"))
        typed = parse_params(method, params.get("params") or {})
        check_image_fit(method, typed, model.image_size)
        parse_target(params.get("target"))
    except XmlcoreError as exc:
        return exc.message
    return None


def _compute_fn(
    job: Job, model: Any, gpu_batch: int | None
) -> Callable[[np.ndarray], list[ImageReport]]:
    params = job.params
    k = int(params.get("k", 5))
    if job.kind == JobKind.PREDICT:
        return lambda images: predict_images(model, images, k=k)
    target = parse_target(params.get("target"))
    method_params = dict(params.get("params") or {})
    if gpu_batch is not None and params.get("method", "lime") in FORWARD_ONLY_METHODS:
        # On a GPU, the batch that fits its free memory, unless the request chose one;
        # never over the schema's bound for this image size (xmlcore.param_costs).
        largest = max_batch_size(str(params.get("method", "lime")), model.image_size)
        method_params.setdefault("batch_size", min(gpu_batch, largest))
    return lambda images: explain_images(
        model,
        images,
        method=str(params.get("method", "lime")),
        target=target,
        params=method_params,
        k=k,
        model_id=job.model_id,
    )


def _fetch_images(
    ctx: WorkerContext, job: Job, size: tuple[int, int], pending: list[str]
) -> tuple[list[np.ndarray], list[str]]:
    """Decoded images of the items that could be read; the others are recorded failed
    (and leave `pending`)."""
    settings = ctx.settings
    prefix = str(job.params["image_prefix"])

    def fetch(key: str) -> bytes | StorageError:
        try:
            return ctx.store.get_bytes(prefix + key, max_bytes=settings.max_image_bytes)
        except StorageError as exc:
            return exc

    with ThreadPoolExecutor(IO_THREADS) as pool:
        fetched = list(pool.map(fetch, pending))
    images, good = [], []
    for key, data in zip(list(pending), fetched, strict=True):
        try:
            if isinstance(data, StorageError):
                raise data
            images.append(decode_image(data, size=size, max_pixels=settings.max_image_pixels))
            good.append(key)
        except StorageError as exc:
            if exc.transient:
                raise
            code = _IMAGE_CODES.get(exc.code, exc.code)
            jobs.record_item_failure(ctx.sessions, job.id, key, code=code, message=exc.message)
            pending.remove(key)
        except XmlcoreError as exc:
            jobs.record_item_failure(ctx.sessions, job.id, key, code=exc.code, message=exc.message)
            pending.remove(key)
    return images, good


# An item's image problem reads as an image problem, whatever layer noticed it.
_IMAGE_CODES = {"storage.not_found": "image.missing", "storage.too_large": "image.too_large"}


def _persist(
    ctx: WorkerContext,
    job: Job,
    pairs: Sequence[tuple[str, ImageReport]],
    timings: dict[str, Any],
    pending: list[str],
) -> None:
    """Write every artifact of the batch (in parallel), then record in one transaction
    the items whose artifacts all arrived; they leave `pending`. A failed put is raised
    after that, so a retry redoes only the items it left unrecorded."""
    artifacts = {
        key: {
            name: item_artifact_key(job.tenant_id, job.id, key, name) for name in report.artifacts
        }
        for key, report in pairs
    }
    puts = [
        (key, name, artifacts[key][name], data)
        for key, report in pairs
        for name, data in report.artifacts.items()
    ]

    def put(entry: tuple[str, str, str, bytes]) -> StorageError | None:
        _, name, storage_key, data = entry
        content_type = "image/png" if name.endswith(".png") else "application/octet-stream"
        try:
            ctx.store.put_bytes(storage_key, data, content_type)
        except StorageError as exc:
            return exc
        return None

    with ThreadPoolExecutor(IO_THREADS) as pool:
        errors = list(pool.map(put, puts))
    unwritten = {entry[0] for entry, error in zip(puts, errors, strict=True) if error}
    written = [
        jobs.ItemSuccess(key, report.result, artifacts[key], timings)
        for key, report in pairs
        if key not in unwritten
    ]
    if written:
        jobs.record_items_success(ctx.sessions, job.id, written)
    for success in written:
        pending.remove(success.item_key)
    first_error = next((error for error in errors if error is not None), None)
    if first_error is not None:
        raise first_error
