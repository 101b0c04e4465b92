"""The job lifecycle: creation, chunk leases, item results, finalisation, cancel.

The database is the truth and the broker only delivers (see ARCHITECTURE.md). Each
public function here is exactly ONE committed transaction built from the
compare-and-set statements in `xmlx.repository.work`, so it is safe to call again
after any crash or duplicate delivery:

- `create_job` inserts the job, its items and chunks together; enqueue the returned
  chunk ids only after it returns (the rows are committed by then).
- `claim_chunk` leases a chunk (attempts + 1) or says why not; a job whose cancel was
  requested drops the chunk; a chunk past `max_attempts` fails its items
  (`chunk.max_attempts`) so a poison chunk cannot loop.
- `record_item_success` / `record_item_failure`: the first write wins; a later write
  is a no-op counted in `jobs.duplicates`. Counters move in the same transaction and
  the write that brings done + failed to total finalises the job (no chords).
- `request_cancel` is cooperative: workers see it through `heartbeat`.
- `reconcile` finds chunks to send again (lost messages, dead workers).

States: queued -> running -> succeeded | partially_succeeded | failed; queued ->
cancelled; running -> cancelling -> cancelled. Times default to now (UTC); tests pass
`now` to move the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import IntegrityError

from xmlx import repository as repo
from xmlx.db import SessionFactory, new_id, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.models import (
    FINAL_JOB_STATES,
    MAX_KEY_LENGTH,
    ChunkState,
    ItemState,
    Job,
    JobKind,
    JobState,
)
from xmlx.repository import work
from xmlx.repository.jobs import ACTIVE_JOB_STATES


class JobError(XmlxError):
    """`job.not_found`, `job.idempotency_conflict`, `job.invalid_items`, `job.invalid_kind`."""


@dataclass(frozen=True)
class CreatedJob:
    job: Job
    chunk_ids: list[str]
    created: bool  # False: an idempotent replay returned the existing job


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    CANCELLED = "cancelled"  # cancel requested: drop the chunk
    FINISHED = "finished"  # chunk or job already final: nothing to do
    LEASED_ELSEWHERE = "leased_elsewhere"  # another live worker holds it
    EXHAUSTED = "exhausted"  # too many attempts: its items are now failed
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class PendingItem:
    id: int
    seq: int
    item_key: str


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    chunk_id: str
    job: Job | None = None
    attempt: int = 0
    items: list[PendingItem] = field(default_factory=list)

    @property
    def claimed(self) -> bool:
        return self.status is ClaimStatus.CLAIMED


@dataclass(frozen=True)
class Heartbeat:
    alive: bool  # False: the lease is lost (expired and taken, or the chunk was closed)
    cancel_requested: bool


@dataclass(frozen=True)
class ItemOutcome:
    recorded: bool  # False: a duplicate write, ignored
    job_state: str
    finalised: bool  # True only for the one write that moved the job to a final state


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    job_id: str
    kind: str


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
) -> CreatedJob:
    """Create a job with one item per key, grouped into chunks of `chunk_size`.

    With `idempotency_key`: the same key and the same `request_hash` return the existing
    job (created=False); the same key with another hash raises `job.idempotency_conflict`.
    """
    _check_request(kind, item_keys, chunk_size, max_items)
    if idempotency_key is not None:
        replay = _replay(sessions, tenant_id, idempotency_key, request_hash)
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
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    )
    try:
        with session_scope(sessions) as session:
            session.add(job)
            session.flush()
            chunk_ids = work.insert_work(session, job.id, item_keys, chunk_size)
    except IntegrityError:
        # Two requests raced with the same idempotency key: the loser replays the winner.
        replay = (
            _replay(sessions, tenant_id, idempotency_key, request_hash)
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


def _replay(
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


def claim_chunk(
    sessions: SessionFactory,
    chunk_id: str,
    owner: str,
    *,
    lease_seconds: int,
    max_attempts: int,
    now: datetime | None = None,
) -> Claim:
    """Lease `chunk_id` for `owner` and list its pending items, or say why not."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        chunk = repo.get_chunk(session, chunk_id)
        job = work.lock_job(session, chunk.job_id, now) if chunk is not None else None
        if chunk is None or job is None:
            return Claim(ClaimStatus.NOT_FOUND, chunk_id)
        if job.cancel_requested:
            _try_finish_cancel(session, job.id, now)
            return Claim(ClaimStatus.CANCELLED, chunk_id, _fresh(session, job.id))
        if job.state in FINAL_JOB_STATES:
            work.end_chunk(session, chunk_id, ChunkState.CANCELLED, now, only_unleased=True)
            return Claim(ClaimStatus.FINISHED, chunk_id, job)
        lease_until = now + timedelta(seconds=lease_seconds)
        if work.lease_chunk(session, chunk_id, owner, now, lease_until, max_attempts):
            work.start_job(session, job.id, now)
            chunk = repo.get_chunk(session, chunk_id)
            assert chunk is not None
            items = [
                PendingItem(item.id, item.seq, item.item_key)
                for item in repo.pending_items(session, chunk_id)
            ]
            return Claim(
                ClaimStatus.CLAIMED, chunk_id, _fresh(session, job.id), chunk.attempts, items
            )
        return _explain_refusal(session, chunk_id, owner, now)


def _explain_refusal(session: Any, chunk_id: str, owner: str, now: datetime) -> Claim:
    chunk = repo.get_chunk(session, chunk_id)
    assert chunk is not None
    job = _fresh(session, chunk.job_id)
    if chunk.state not in (ChunkState.QUEUED, ChunkState.LEASED):
        return Claim(ClaimStatus.FINISHED, chunk_id, job, chunk.attempts)
    if work.end_chunk(session, chunk_id, ChunkState.FAILED, now, only_unleased=True) == 0:
        return Claim(ClaimStatus.LEASED_ELSEWHERE, chunk_id, job, chunk.attempts)
    message = f"the chunk was started {chunk.attempts} times without finishing"
    failed = work.fail_pending_items(
        session, now, "chunk.max_attempts", message, job_id=chunk.job_id, chunk_id=chunk_id
    )
    _count_and_finalise(session, chunk.job_id, now, failed=failed)
    return Claim(ClaimStatus.EXHAUSTED, chunk_id, _fresh(session, chunk.job_id), chunk.attempts)


def heartbeat(
    sessions: SessionFactory,
    chunk_id: str,
    owner: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> Heartbeat:
    """Extend `owner`'s lease; call between items, and stop when cancel is requested."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        lease_until = now + timedelta(seconds=lease_seconds)
        alive = work.extend_lease(session, chunk_id, owner, now, lease_until) == 1
        chunk = repo.get_chunk(session, chunk_id)
        cancel = chunk is not None and repo.is_cancel_requested(session, chunk.job_id)
    return Heartbeat(alive=alive, cancel_requested=cancel)


def record_item_success(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    result: dict[str, Any],
    artifacts: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    fields = {"result": result, "artifacts": artifacts or {}, "timings": timings or {}}
    return _record(sessions, job_id, item_key, ItemState.SUCCEEDED, now, fields)


def record_item_failure(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    code: str,
    message: str,
    timings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    fields = {"error_code": code, "error_message": message, "timings": timings or {}}
    return _record(sessions, job_id, item_key, ItemState.FAILED, now, fields)


def _record(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    state: ItemState,
    now: datetime | None,
    fields: dict[str, Any],
) -> ItemOutcome:
    now = now or utcnow()
    with session_scope(sessions) as session:
        if work.lock_job(session, job_id, now) is None:
            raise JobError("job.not_found", f"no job {job_id}")
        if work.finish_item(session, job_id, item_key, state, now, **fields) == 0:
            work.count_duplicate(session, job_id)
            return ItemOutcome(False, _fresh(session, job_id).state, False)
        succeeded = state is ItemState.SUCCEEDED
        finalised = _count_and_finalise(
            session, job_id, now, done=int(succeeded), failed=int(not succeeded)
        )
        return ItemOutcome(True, _fresh(session, job_id).state, finalised)


def _count_and_finalise(
    session: Any, job_id: str, now: datetime, *, done: int = 0, failed: int = 0
) -> bool:
    if done or failed:
        work.add_progress(session, job_id, done=done, failed=failed)
    return work.finalise_if_complete(session, job_id, now) == 1


def complete_chunk(
    sessions: SessionFactory, chunk_id: str, owner: str, *, now: datetime | None = None
) -> str | None:
    """`owner` finished the chunk. Items it left pending fail (`chunk.incomplete`), so a
    done chunk never strands its job. Returns the job state (None: chunk not found)."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        chunk = repo.get_chunk(session, chunk_id)
        if chunk is None or work.lock_job(session, chunk.job_id, now) is None:
            return None
        if work.end_chunk(session, chunk_id, ChunkState.DONE, now, owner=owner):
            failed = work.fail_pending_items(
                session,
                now,
                "chunk.incomplete",
                "the worker finished the chunk without this item",
                job_id=chunk.job_id,
                chunk_id=chunk_id,
            )
            _count_and_finalise(session, chunk.job_id, now, failed=failed)
        _try_finish_cancel(session, chunk.job_id, now)
        return _fresh(session, chunk.job_id).state


def release_chunk(
    sessions: SessionFactory, chunk_id: str, owner: str, *, now: datetime | None = None
) -> str | None:
    """`owner` stops early: the chunk closes if the job is being cancelled, else goes back
    to the queue (the reconciler resends it). Returns the job state."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        chunk = repo.get_chunk(session, chunk_id)
        job = work.lock_job(session, chunk.job_id, now) if chunk is not None else None
        if chunk is None or job is None:
            return None
        to_state = ChunkState.CANCELLED if job.cancel_requested else ChunkState.QUEUED
        work.end_chunk(session, chunk_id, to_state, now, owner=owner)
        _try_finish_cancel(session, job.id, now)
        return _fresh(session, job.id).state


def request_cancel(
    sessions: SessionFactory, tenant_id: str, job_id: str, *, now: datetime | None = None
) -> Job:
    """Ask a job to stop. A final job is returned unchanged (check its state)."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None or job.tenant_id != tenant_id:
            raise JobError("job.not_found", f"no job {job_id}")
        work.request_cancel(session, job_id, now)
        _try_finish_cancel(session, job_id, now)
        return _fresh(session, job_id)


def _try_finish_cancel(session: Any, job_id: str, now: datetime) -> None:
    job = _fresh(session, job_id)
    if not job.cancel_requested or job.state not in (JobState.CANCELLING, JobState.CANCELLED):
        return
    work.cancel_idle_chunks(session, job_id, now)
    work.finish_cancel(session, job_id, now)
    if _fresh(session, job_id).state == JobState.CANCELLED:
        work.cancel_pending_items(session, job_id, now)


def fail_job(
    sessions: SessionFactory, job_id: str, code: str, message: str, *, now: datetime | None = None
) -> Job | None:
    """Fail a whole job (e.g. its model cannot load): pending items fail with `code`."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None:
            return None
        if job.state in ACTIVE_JOB_STATES:
            failed = work.fail_pending_items(session, now, code, message, job_id=job_id)
            work.add_progress(session, job_id, failed=failed)
            work.cancel_idle_chunks(session, job_id, now)
            work.fail_job(session, job_id, now, code, message)
        return _fresh(session, job_id)


def reconcile(
    sessions: SessionFactory,
    *,
    grace_seconds: int,
    limit: int = 500,
    now: datetime | None = None,
) -> list[ChunkRef]:
    """Chunks to send again (stranded in the queue or under an expired lease), marked as
    dispatched now; cancelled jobs whose workers died are closed instead."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        pairs = repo.chunks_to_redeliver(session, now, timedelta(seconds=grace_seconds), limit)
        refs = [ChunkRef(c.id, j.id, j.kind) for c, j in pairs if not j.cancel_requested]
        cancelling = {j.id for _, j in pairs if j.cancel_requested}
    for job_id in sorted(cancelling):
        with session_scope(sessions) as session:
            if work.lock_job(session, job_id, now) is not None:
                _try_finish_cancel(session, job_id, now)
    mark_dispatched(sessions, [ref.chunk_id for ref in refs], now=now)
    return refs


def mark_dispatched(
    sessions: SessionFactory, chunk_ids: Sequence[str], *, now: datetime | None = None
) -> None:
    """Record that messages for these chunks were sent (the reconciler waits a grace)."""
    with session_scope(sessions) as session:
        work.mark_dispatched(session, chunk_ids, now or utcnow())


def get_job(sessions: SessionFactory, tenant_id: str, job_id: str) -> Job:
    with session_scope(sessions) as session:
        job = repo.get_job(session, tenant_id, job_id)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        return job


def _fresh(session: Any, job_id: str) -> Job:
    job = repo.get_job_unscoped(session, job_id)
    assert job is not None
    return job
