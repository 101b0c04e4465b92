"""Big batches, prepared in the background: list the source, insert items in slices.

A batch named by a prefix or a manifest object is accepted at once (`start_preparing`:
the job row alone, state `preparing`, no item yet). `prepare_batch`, run by a task on
the default queue, then reads the source one listing page (or manifest line) at a time
and commits the items a slice at a time with their chunks, so neither the API nor the
worker ever holds a million keys. The job becomes `queued` when the source is
exhausted; the caller sends the chunk messages after that commit.

Every slice is one transaction that locks the job and checks that the job is still
preparing and that its `total` is what this preparer last saw. So a cancel stops the
preparation at its next slice, and two preparers of one job (a reconciler's copy of a
task that was only slow) never insert the same slice twice: the loser stops. Resuming
is reading the job: `total` items are in, and since listings are ordered the next key
comes after item `total - 1` (a manifest: after its first `total` keys).

Failures end the job with a code: `batch.listing_failed` (the store refused the
listing), `batch.empty`, `batch.too_large` (more than `max_items`), `key.invalid`,
`batch.duplicate_keys` (a manifest naming a key twice); once listed, `quota.job_cost`
and `quota.items_in_flight` (the tenant's limits, `xmlx.quotas`). A transient storage error is
raised for the task to retry; the resumed run continues where this one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xmlcore.param_costs import PREDICT
from xmlx import deletion, quotas
from xmlx import repository as repo
from xmlx.db import SessionFactory, new_id, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.jobs.control import fail_job
from xmlx.jobs.cost import DEFAULT_IMAGE_SIZE, check_job_cost
from xmlx.jobs.create import replay_job
from xmlx.jobs.types import CreatedJob
from xmlx.keys import user_key_problem
from xmlx.logs import current_request_id
from xmlx.models import Job, JobKind, JobState, Model
from xmlx.repository import work
from xmlx.storage import ObjectStore, StorageError, iter_keys

SLICE_ROWS = 5000  # items per transaction: big enough for COPY, small enough to heartbeat


class PreparationError(XmlxError):
    """Why a preparation ends the job (the code is the job's error code)."""


@dataclass(frozen=True)
class Preparation:
    job_id: str
    kind: str
    state: str  # the job's state once this run stopped
    chunk_ids: list[str]  # to send now: set only by the run that moved the job to queued
    paused: bool = False  # stopped at `max_slices` with more to do: send a fresh task


def start_preparing(
    sessions: SessionFactory,
    *,
    tenant_id: str,
    kind: str,
    source: dict[str, str],
    params: dict[str, Any],
    model_id: str | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    callback_url: str | None = None,
) -> CreatedJob:
    """The job row of a batch to prepare from `source` ({"prefix": storage prefix, "base":
    the prefix keys are relative to} or {"manifest": storage key, "base": ...}). Its size
    is known only once listed: the tenant's limits refuse it if even one more item would
    pass them (`quotas.admit`, in the transaction that inserts the row)."""
    if idempotency_key is not None:
        replay = replay_job(sessions, tenant_id, idempotency_key, request_hash)
        if replay is not None:
            return replay
    now = utcnow()
    job = Job(
        id=new_id("job"), tenant_id=tenant_id, kind=kind, state=JobState.PREPARING,
        params=params, model_id=model_id, total=0, done=0, failed=0, duplicates=0,
        cancel_requested=False, idempotency_key=idempotency_key, request_hash=request_hash,
        source=source, request_id=current_request_id(), callback_url=callback_url,
        created_at=now, updated_at=now,
    )  # fmt: skip
    try:
        with session_scope(sessions) as session:
            quotas.admit(session, tenant_id, 1)
            session.add(job)
    except (IntegrityError, quotas.QuotaError):  # a racing twin won (`create_job`)
        replay = (
            replay_job(sessions, tenant_id, idempotency_key, request_hash)
            if idempotency_key is not None
            else None
        )
        if replay is None:
            raise
        return replay
    return CreatedJob(job=job, chunk_ids=[], created=True)


def prepare_batch(
    sessions: SessionFactory,
    store: ObjectStore,
    job_id: str,
    *,
    chunk_size: int,
    max_items: int,
    slice_rows: int = SLICE_ROWS,
    max_slices: int | None = None,
    cost_limit: int | None = None,
) -> Preparation:
    """Insert the items of a preparing job, from where an earlier run stopped. With
    `max_slices`, stop after that many slices (the job stays `preparing`; run again to
    go on), which keeps one task well inside its time limit on a slow listing.
    `cost_limit` (the deployment's `max_job_forward_passes`): once the count is known,
    a job over its tenant's limit fails with `quota.job_cost` instead of queueing."""
    with session_scope(sessions) as session:
        job = repo.get_job_unscoped(session, job_id)
        if job is None or job.state != JobState.PREPARING or job.source is None:
            return Preparation(job_id, job.kind if job else "", job.state if job else "", [])
        kind, source, offset = job.kind, dict(job.source), job.total
        last_key = repo.item_key_at(session, job_id, offset - 1) if offset else None
        deleted = deletion.deleted_upload_prefixes(session, job.tenant_id)
    per_slice = -(-slice_rows // chunk_size) * chunk_size  # whole chunks in every slice
    try:
        keys = _source_keys(store, source, offset, last_key, deleted)
        slices = 0
        while batch := list(islice(keys, per_slice)):
            _check_slice(batch, source["base"], offset + len(batch), max_items)
            if not _insert_slice(sessions, job_id, batch, offset, chunk_size):
                return _stopped(sessions, job_id, kind)
            offset, slices = offset + len(batch), slices + 1
            if slices == max_slices and len(batch) == per_slice:
                return Preparation(job_id, kind, JobState.PREPARING, [], paused=True)
    except StorageError as exc:
        if exc.transient:
            raise
        return _failed(sessions, job_id, kind, "batch.listing_failed", f"{exc.code}: {exc}")
    except PreparationError as exc:
        return _failed(sessions, job_id, kind, exc.code, exc.message)
    return _finish(sessions, job_id, kind, cost_limit)


def _source_keys(
    store: ObjectStore,
    source: dict[str, str],
    offset: int,
    last_key: str | None,
    deleted: Sequence[deletion.DeletedUploads] = (),
) -> Iterator[str]:
    """The batch's keys (relative to the source's base) after the first `offset`. A
    listing leaves out uploads deleted but not purged yet (resuming goes by the last
    key, not a count, so that is safe); a manifest's keys are kept as written, and a
    deleted one fails as a missing image on the worker."""
    base = source["base"]
    if "prefix" in source:
        start_after = base + last_key if last_key is not None else None
        listed = iter_keys(store, source["prefix"], start_after=start_after)
        return (key[len(base) :] for key in deletion.without_deleted_uploads(deleted, listed))
    lines = (line.strip() for line in _manifest_lines(store, source["manifest"]))
    return islice((line for line in lines if line), offset, None)


def _manifest_lines(store: ObjectStore, key: str) -> Iterator[str]:
    try:
        yield from store.iter_lines(key)
    except UnicodeDecodeError as exc:
        raise PreparationError("manifest.invalid", "the key list is not UTF-8 text") from exc


def _check_slice(batch: list[str], base: str, total: int, max_items: int) -> None:
    if total > max_items:
        raise PreparationError(
            "batch.too_large", f"more than {max_items} images in one batch; split it"
        )
    for key in batch:
        reason = user_key_problem(key, base)
        if reason is not None:
            raise PreparationError("key.invalid", f"invalid key {key[:200]!r}: {reason}")
    if len(set(batch)) != len(batch):
        raise PreparationError("batch.duplicate_keys", "an image is listed twice")


def _insert_slice(
    sessions: SessionFactory, job_id: str, batch: list[str], offset: int, chunk_size: int
) -> bool:
    """One slice in one transaction; False when the job moved on without us (cancelled,
    failed, or another preparer inserted this slice)."""
    try:
        with session_scope(sessions) as session:
            work.lock_job(session, job_id, utcnow())
            if work.add_prepared_items(session, job_id, offset, len(batch)) == 0:
                return False
            first_chunk = -(-offset // chunk_size)
            work.insert_work(session, job_id, batch, chunk_size,
                             first_seq=offset, first_chunk_seq=first_chunk)  # fmt: skip
    except IntegrityError as exc:  # a key of this slice was in an earlier one
        raise PreparationError("batch.duplicate_keys", "an image is listed twice") from exc
    return True


def _finish(
    sessions: SessionFactory, job_id: str, kind: str, cost_limit: int | None
) -> Preparation:
    now = utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None or job.state != JobState.PREPARING:
            return Preparation(job_id, kind, job.state if job else "", [])
        refusal = None if cost_limit is None else _cost_refusal(session, job, cost_limit)
        refusal = refusal or _items_refusal(session, job)
        if refusal is None and work.finish_preparing(session, job_id, now):
            return Preparation(job_id, kind, JobState.QUEUED, repo.chunk_ids(session, job_id))
    if refusal is not None:
        return _failed(sessions, job_id, kind, refusal.code, refusal.message)
    return _failed(sessions, job_id, kind, "batch.empty", "the batch has no image")


def _cost_refusal(session: Session, job: Job, cost_limit: int) -> XmlxError | None:
    """`quota.job_cost` when the listed items make the job dearer than its tenant may
    run (the API could only check one image before the listing)."""
    tenant = repo.get_tenant(session, job.tenant_id)
    model = session.get(Model, job.model_id) if job.model_id else None
    if tenant is None:
        return None
    size = ((model.params or {}) if model else {}).get("image_size") or DEFAULT_IMAGE_SIZE
    params = job.params or {}
    method = str(params.get("method", PREDICT)) if job.kind == JobKind.EXPLAIN else PREDICT
    target = params.get("target") or {}
    targets = int(target.get("k", 1)) if target.get("kind") == "top_k" else 1
    try:
        check_job_cost(
            tenant,
            method,
            params.get("params") or {},
            job.total,
            default_limit=cost_limit,
            targets=targets,
            image_size=(int(size[0]), int(size[1])),
            evaluate=[str(kind) for kind in params.get("evaluate") or ()],
        )
    except XmlxError as exc:
        return exc
    return None


def _items_refusal(session: Session, job: Job) -> XmlxError | None:
    """`quota.items_in_flight` when the listed items (counted in flight already, as a
    preparing job's) take the tenant past its limit: the API could only check one."""
    try:
        quotas.check_items(session, job.tenant_id, 0)
    except quotas.QuotaError as exc:
        return exc
    return None


def _failed(
    sessions: SessionFactory, job_id: str, kind: str, code: str, message: str
) -> Preparation:
    job = fail_job(sessions, job_id, code, message)
    return Preparation(job_id, kind, job.state if job else "", [])


def _stopped(sessions: SessionFactory, job_id: str, kind: str) -> Preparation:
    with session_scope(sessions) as session:
        job = repo.get_job_unscoped(session, job_id)
        return Preparation(job_id, kind, job.state if job else "", [])


def stalled_preparations(
    sessions: SessionFactory, *, grace_seconds: int, now: datetime | None = None
) -> list[tuple[str, str]]:
    """(job id, kind) of preparations nobody advanced for `grace_seconds` (a lost task):
    to send again. Each is touched now, so the next reconciler tick waits a grace."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        jobs = repo.stalled_preparations(session, now - timedelta(seconds=grace_seconds))
        for job in jobs:
            work.lock_job(session, job.id, now)
        return [(job.id, job.kind) for job in jobs]
