"""Creating a job: the job, its items and its chunks in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from xmlx import quotas
from xmlx import repository as repo
from xmlx.db import SessionFactory, new_id, session_scope, utcnow
from xmlx.jobs.common import settle_job
from xmlx.jobs.types import CreatedJob, JobError
from xmlx.logs import current_request_id
from xmlx.models import MAX_KEY_LENGTH, Job, JobKind, JobState, Priority
from xmlx.repository import work


def create_job(
    sessions: SessionFactory,
    *,
    tenant_id: str,
    kind: str,
    item_keys: Sequence[str],
    params: dict[str, Any] | None = None,
    model_id: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    chunk_size: int = 32,
    max_items: int = 100_000,
    priority: str = Priority.NORMAL,
    callback_url: str | None = None,
) -> CreatedJob:
    """Create a job with one item per key, grouped into chunks of `chunk_size`.

    `callback_url`: where the final state is POSTed (`xmlx.webhooks`; checked by the
    caller), else the tenant's default.

    With `idempotency_key`: the same key and the same `request_hash` return the existing
    job (created=False); the same key with another hash raises `job.idempotency_conflict`.

    The tenant's limits (`xmlx.quotas.admit`: `quota.storage_exceeded`,
    `quota.items_in_flight`) are checked in the transaction that inserts the job.
    """
    _check_request(kind, item_keys, chunk_size, max_items)
    if priority not in set(Priority):
        raise JobError("job.invalid_priority", f"priority must be one of {list(Priority)}")
    if idempotency_key is not None:
        replay = replay_job(sessions, tenant_id, idempotency_key, request_hash)
        if replay is not None:
            return replay
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        kind=kind,
        state=JobState.QUEUED,
        params=params or {},
        model_id=model_id,
        total=len(item_keys),
        done=0,
        failed=0,
        duplicates=0,
        priority=priority,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        request_id=current_request_id(),
        callback_url=callback_url,
        created_at=now,
        updated_at=now,
    )
    try:
        with session_scope(sessions) as session:
            quotas.admit(session, tenant_id, len(item_keys))
            session.add(job)
            session.flush()
            chunk_ids = work.insert_work(session, job.id, item_keys, chunk_size)
            settle_job(session, job.id)  # a retrained model: failed -> pending
    except (IntegrityError, quotas.QuotaError):
        # Two requests raced with the same idempotency key: the loser replays the winner
        # (having waited for the winner's tenant lock, it may count the winner's items
        # and be refused by the quota instead of hitting the unique key).
        replay = (
            replay_job(sessions, tenant_id, idempotency_key, request_hash)
            if (idempotency_key is not None)
            else None
        )
        if replay is None:
            raise
        return replay
    return CreatedJob(job=job, chunk_ids=chunk_ids, created=True)


def _check_request(kind: str, item_keys: Sequence[str], chunk_size: int, max_items: int) -> None:
    if kind not in set(JobKind):
        raise JobError("job.invalid_kind", f"kind must be one of {[k.value for k in JobKind]}")
    if chunk_size < 1:
        raise JobError("job.invalid_chunk_size", "chunk_size must be at least 1")
    if not item_keys:
        raise JobError("job.invalid_items", "a job needs at least one item")
    if len(item_keys) > max_items:
        raise JobError("job.invalid_items", f"{len(item_keys)} items; at most {max_items}")
    if len(set(item_keys)) != len(item_keys):
        raise JobError("job.invalid_items", "item keys must be unique within a job")
    if any(not key or len(key) > MAX_KEY_LENGTH for key in item_keys):
        raise JobError("job.invalid_items", f"item keys must be 1..{MAX_KEY_LENGTH} characters")


def replay_job(
    sessions: SessionFactory, tenant_id: str, key: str, request_hash: str | None
) -> CreatedJob | None:
    with session_scope(sessions) as session:
        job = repo.get_job_by_idempotency_key(session, tenant_id, key)
        if job is None:
            return None
        if job.request_hash != request_hash:
            raise JobError(
                "job.idempotency_conflict",
                f"idempotency key {key!r} was used with a different request (job {job.id})",
            )
        chunk_ids = [chunk.id for chunk in repo.list_chunks(session, job.id)]
    return CreatedJob(job=job, chunk_ids=chunk_ids, created=False)


def get_job(sessions: SessionFactory, tenant_id: str, job_id: str) -> Job:
    with session_scope(sessions) as session:
        job = repo.get_job(session, tenant_id, job_id)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        return job
