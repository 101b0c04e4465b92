"""Running one chunk of an explanation or prediction job.

The steps follow ARCHITECTURE.md, "Jobs": lease the chunk (items already finished by
an earlier attempt are not handed out again), then per batch of images: heartbeat
(stop on cancel or a lost lease; a `LeaseKeeper` thread also beats DURING a batch,
which can outlast the lease), fetch and decode (a bad image fails alone, with its
code), call ``xmlcore.batch`` once for the whole batch, write artifacts under keys
unique to this attempt (`xmlx.keys.attempt_token`), record the batch's items in one
transaction, which counts only while this worker holds the lease (first write wins).
The batch's object-store round trips run in parallel, and the next batch's images are
fetched and decoded on a thread while this one is explained (one batch ahead; nothing
is recorded from there: a read that failed transiently is simply read again, and a
stop discards it). A storage outage is waited out
inside the lease (backoff, heartbeats, only the items not yet recorded are tried
again); a transient failure that outlasts that hands the chunk back without spending
an attempt (`jobs.hand_back_chunk`) and propagates, so the task retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from workers.artifacts import IO_THREADS, Attempt, persist, sweep
from workers.context import WorkerContext
from workers.lease import ChunkStoppedError, LeaseKeeper, hand_back, is_transient
from workers.metrics import BATCH_SECONDS, FORWARD_PASSES, record_gpu_memory
from xmlcore.batch import ImageReport, explain_images, predict_images
from xmlcore.errors import XmlcoreError
from xmlcore.images import decode_image
from xmlcore.methods import parse_target
from xmlcore.param_costs import check_image_fit, forward_passes_per_item, max_batch_size
from xmlcore.params import EVALUATIONS, parse_params
from xmlx import deletion, jobs
from xmlx.keys import attempt_token
from xmlx.models import Job, JobKind
from xmlx.storage import StorageError

log = logging.getLogger("xmlx.worker")
STORAGE_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0)
# Methods whose batches are forward passes only: gradients need several times the memory.
FORWARD_ONLY_METHODS = frozenset({"lime", "kernel_shap", "occlusion"})
# Per item key: its decoded image, or why it has none (`_load_images`).
Loaded = dict[str, np.ndarray | StorageError | XmlcoreError]


@dataclass(frozen=True)
class ChunkOutcome:
    status: str  # claimed status, or "done", "cancelled", "lease_lost", "model_failed"
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
    return run_claimed(ctx, claim)


def run_claimed(ctx: WorkerContext, claim: jobs.Claim) -> ChunkOutcome:
    """Run a chunk `ctx.owner` has leased (`claim`); hand it back on a transient error."""
    if not claim.claimed or claim.job is None:
        return ChunkOutcome(claim.status.value)
    lease = jobs.LeaseRef(claim.chunk_id, ctx.owner)
    token = attempt_token(claim.attempt, ctx.owner)
    attempt = Attempt(claim.job, lease, token, sweep=claim.attempt > 1 or claim.retries > 0)
    try:
        with LeaseKeeper(ctx, claim.chunk_id) as keeper:
            return _run_items(ctx, attempt, [item.item_key for item in claim.items], keeper)
    except ChunkStoppedError as stop:
        if stop.lease_lost:
            return ChunkOutcome("lease_lost")
        jobs.release_chunk(ctx.sessions, claim.chunk_id, ctx.owner)
        return ChunkOutcome("cancelled")
    except Exception as exc:
        if is_transient(exc):
            hand_back(ctx, claim.chunk_id)
        raise


def _run_items(
    ctx: WorkerContext, attempt: Attempt, item_keys: list[str], keeper: LeaseKeeper
) -> ChunkOutcome:
    job = attempt.job
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
    batch_size = max(1, ctx.settings.images_per_batch)
    batches = [item_keys[i : i + batch_size] for i in range(0, len(item_keys), batch_size)]
    # One thread, one batch ahead: at most two batches of decoded images in memory.
    ahead = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    try:
        upcoming: Future[Loaded] | None = None
        for index, batch in enumerate(batches):
            keeper.beat()
            loaded = _prefetched(upcoming)
            upcoming = None
            if index + 1 < len(batches):
                upcoming = ahead.submit(_load_images, ctx, attempt, model, batches[index + 1])
            _run_batch_through_outages(ctx, attempt, model, batch, keeper, loaded)
            recorded += len(batch)
    finally:
        # A stop (cancel, lost lease, error) leaves the prefetch to finish unread.
        ahead.shutdown(wait=False, cancel_futures=True)
    if attempt.sweep:
        sweep(ctx, attempt)
    jobs.complete_chunk(ctx.sessions, attempt.lease.chunk_id, ctx.owner)
    return ChunkOutcome("done", recorded)


def _prefetched(upcoming: Future[Loaded] | None) -> Loaded | None:
    """The batch read ahead, or None when that read failed as a whole (say, the
    database was unreachable): the batch is then read the normal way, where such a
    failure is handled (`_run_batch_through_outages`, the task's retries)."""
    if upcoming is None:
        return None
    try:
        return upcoming.result()
    except Exception:  # met again, and handled, on the normal read
        log.warning("prefetch failed; reading the batch again", exc_info=True)
        return None


def _run_batch_through_outages(
    ctx: WorkerContext,
    attempt: Attempt,
    model: Any,
    item_keys: Sequence[str],
    keeper: LeaseKeeper,
    loaded: Loaded | None = None,
) -> None:
    """Run one batch; while storage is unavailable, back off (keeping the lease) and
    try the items not yet recorded again. Gives up (raises, so the task retries) after
    half the task's soft time limit; raises ChunkStoppedError on cancel or lost lease.
    ``loaded``: the batch's prefetched images (`_load_images`), used by the first try."""
    pending = list(item_keys)
    deadline = time.monotonic() + ctx.settings.task_soft_time_limit_seconds / 2
    tries = 0
    while True:
        try:
            _run_batch(ctx, attempt, model, pending, loaded)
            return
        except StorageError as exc:
            if not exc.transient or time.monotonic() > deadline:
                raise
        backoff = STORAGE_BACKOFF_SECONDS[min(tries, len(STORAGE_BACKOFF_SECONDS) - 1)]
        time.sleep(min(backoff, ctx.settings.lease_seconds / 3))  # the lease must outlive it
        tries += 1
        loaded = None  # the outage's tries read afresh
        keeper.beat()


def _run_batch(
    ctx: WorkerContext, attempt: Attempt, model: Any, pending: list[str], loaded: Loaded | None
) -> None:
    """Explain the `pending` items; each one recorded is removed from the list, so a
    batch interrupted by a storage outage is resumed, not redone."""
    started = time.perf_counter()
    try:
        _explain_batch(ctx, attempt, model, pending, started, loaded)
    finally:
        BATCH_SECONDS.labels(attempt.job.kind).observe(time.perf_counter() - started)
        record_gpu_memory(ctx.gpu_memory_in_use())


def _explain_batch(
    ctx: WorkerContext,
    attempt: Attempt,
    model: Any,
    pending: list[str],
    started: float,
    loaded: Loaded | None,
) -> None:
    job = attempt.job
    images, good_keys = _fetch_images(ctx, attempt, model, pending, loaded)
    if not good_keys:
        return
    compute = _compute_fn(job, model, ctx.forward_batch_size(model))
    try:
        reports = compute(np.stack(images))
        pairs = list(zip(good_keys, reports, strict=True))
        _count_forward_passes(job, model, len(good_keys))
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # any deterministic failure: see _explain_failure
        code, message = _explain_failure(exc)
        # The same images with the same parameters would fail the same way again: each
        # item fails with the code; nothing is retried.
        for key in good_keys:
            attempt.record_failure(ctx, key, code, message)
            pending.remove(key)
        return
    seconds = (time.perf_counter() - started) / max(len(good_keys), 1)
    persist(ctx, attempt, pairs, {"seconds": round(seconds, 4)}, pending)


def _count_forward_passes(job: Job, model: Any, n_images: int) -> None:
    method = "predict" if job.kind == JobKind.PREDICT else str(job.params.get("method", "lime"))
    typed = None if method == "predict" else parse_params(method, job.params.get("params") or {})
    evaluate = [str(kind) for kind in job.params.get("evaluate") or ()]
    per_image = forward_passes_per_item(
        method, typed, targets=1, image_size=model.image_size, evaluate=evaluate
    )
    FORWARD_PASSES.labels(job.kind, method).inc(per_image * n_images)


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
    unknown = set(params.get("evaluate") or ()) - set(EVALUATIONS)
    if unknown:
        return f"evaluate takes {list(EVALUATIONS)}, not {sorted(map(str, unknown))}"
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
        evaluate=[str(kind) for kind in params.get("evaluate") or ()],
    )


def _fetch_images(
    ctx: WorkerContext, attempt: Attempt, model: Any, pending: list[str], loaded: Loaded | None
) -> tuple[list[np.ndarray], list[str]]:
    """Decoded images of the items that could be read; the others are recorded failed
    (and leave `pending`). Items ``loaded`` holds are taken from it, unless their read
    failed transiently there: those, and the items it lacks, are read now."""
    found = {
        key: value
        for key, value in (loaded or {}).items()
        if key in pending and not (isinstance(value, StorageError) and value.transient)
    }
    found.update(_load_images(ctx, attempt, model, [k for k in pending if k not in found]))
    images, good = [], []
    for key in list(pending):
        value = found[key]
        if isinstance(value, np.ndarray):
            images.append(value)
            good.append(key)
        elif isinstance(value, StorageError):
            if value.transient:
                raise value
            code = _IMAGE_CODES.get(value.code, value.code)
            attempt.record_failure(ctx, key, code, value.message)
            pending.remove(key)
        else:
            attempt.record_failure(ctx, key, value.code, value.message)
            pending.remove(key)
    return images, good


def _load_images(ctx: WorkerContext, attempt: Attempt, model: Any, keys: Sequence[str]) -> Loaded:
    """Read (in parallel) and decode (one at a time, bounding the memory) the images of
    ``keys``. Records nothing, so it can run ahead on a thread: `_fetch_images` decides
    what each outcome means."""
    settings = ctx.settings
    prefix = str(attempt.job.params["image_prefix"])
    # Uploads deleted but not purged yet are gone already: read as missing, not as
    # whatever the purge has not reached.
    deleted = deletion.read_deleted_uploads(ctx.sessions, attempt.job.tenant_id) if keys else []

    def fetch(key: str) -> bytes | StorageError:
        covering = deletion.deleted_upload_covering(deleted, prefix + key)
        if covering is not None:
            return StorageError(
                "storage.not_found", f"no object {key} (deleted by purge {covering.purge_id})"
            )
        try:
            return ctx.store.get_bytes(prefix + key, max_bytes=settings.max_image_bytes)
        except StorageError as exc:
            return exc

    if not keys:
        return {}
    with ThreadPoolExecutor(min(IO_THREADS, len(keys))) as pool:
        fetched = list(pool.map(fetch, keys))
    loaded: Loaded = {}
    for key, data in zip(keys, fetched, strict=True):
        if isinstance(data, StorageError):
            loaded[key] = data
            continue
        try:
            loaded[key] = decode_image(
                data, size=model.image_size, max_pixels=settings.max_image_pixels
            )
        except XmlcoreError as exc:
            loaded[key] = exc
    return loaded


# An item's image problem reads as an image problem, whatever layer noticed it.
_IMAGE_CODES = {"storage.not_found": "image.missing", "storage.too_large": "image.too_large"}
