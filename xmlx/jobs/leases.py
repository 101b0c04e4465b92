"""Chunk leases: claim, heartbeat, complete, release."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.common import count_and_finalise, fresh_job, settle_job, try_finish_cancel
from xmlx.jobs.types import Claim, ClaimStatus, Heartbeat, PendingItem
from xmlx.models import FINAL_JOB_STATES, ChunkState
from xmlx.repository import work


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
            try_finish_cancel(session, job.id, now)
            return Claim(ClaimStatus.CANCELLED, chunk_id, fresh_job(session, job.id))
        if job.state in FINAL_JOB_STATES:
            work.end_chunk(session, chunk_id, ChunkState.CANCELLED, now, only_unleased=True)
            work.count_duplicate(session, job.id)
            return Claim(ClaimStatus.FINISHED, chunk_id, fresh_job(session, job.id))
        lease_until = now + timedelta(seconds=lease_seconds)
        if work.lease_chunk(session, chunk_id, owner, now, lease_until, max_attempts):
            if work.start_job(session, job.id, now):
                settle_job(session, job.id)
            chunk = repo.get_chunk(session, chunk_id)
            assert chunk is not None
            items = [
                PendingItem(item.id, item.seq, item.item_key)
                for item in repo.pending_items(session, chunk_id)
            ]
            job = fresh_job(session, job.id)
            return Claim(ClaimStatus.CLAIMED, chunk_id, job, chunk.attempts, items, chunk.retries)
        return _explain_refusal(session, chunk_id, owner, now)


def _explain_refusal(session: Session, chunk_id: str, owner: str, now: datetime) -> Claim:
    """Why a claim failed. A message for a chunk that is done or held by a live worker is
    a duplicate delivery (a redelivery after the visibility timeout, a reconciler copy):
    counted in `jobs.duplicates`, like an item result written twice."""
    chunk = repo.get_chunk(session, chunk_id)
    assert chunk is not None
    job = fresh_job(session, chunk.job_id)
    if chunk.state not in (ChunkState.QUEUED, ChunkState.LEASED):
        work.count_duplicate(session, chunk.job_id)
        return Claim(ClaimStatus.FINISHED, chunk_id, job, chunk.attempts)
    if work.end_chunk(session, chunk_id, ChunkState.FAILED, now, only_unleased=True) == 0:
        work.count_duplicate(session, chunk.job_id)
        return Claim(ClaimStatus.LEASED_ELSEWHERE, chunk_id, job, chunk.attempts)
    message = f"the chunk was started {chunk.attempts} times without finishing"
    failed = work.fail_pending_items(
        session, now, "chunk.max_attempts", message, job_id=chunk.job_id, chunk_id=chunk_id
    )
    count_and_finalise(session, chunk.job_id, now, failed=failed)
    return Claim(ClaimStatus.EXHAUSTED, chunk_id, fresh_job(session, chunk.job_id), chunk.attempts)


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
            count_and_finalise(session, chunk.job_id, now, failed=failed)
        try_finish_cancel(session, chunk.job_id, now)
        return fresh_job(session, chunk.job_id).state


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
        try_finish_cancel(session, job.id, now)
        return fresh_job(session, job.id).state
