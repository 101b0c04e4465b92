"""The writes of the job lifecycle, each a compare-and-set statement.

Every decision lives in an UPDATE's WHERE clause, so it holds under concurrency on
PostgreSQL (row locks, READ COMMITTED re-checks the WHERE on the latest row) and on
SQLite (one writer at a time). A function returns how many rows it changed; 0 means
"somebody else got there first" and the caller treats it as a no-op. `xmlx.jobs`
composes these into transactions; call them only from there.

Lock order, to keep PostgreSQL free of deadlocks: job row, then chunk rows, then item
rows. `lock_job` opens every lifecycle transaction for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, not_, or_, update
from sqlalchemy.orm import Session

from xmlx.models import Chunk, ChunkState, Item, ItemState, Job, JobState
from xmlx.repository._exec import execute_count
from xmlx.repository.bulk import insert_work as insert_work

_FINALISABLE = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)


def lock_job(session: Session, job_id: str, now: datetime) -> Job | None:
    """Take the job row's lock (SQLite: the write lock) and return the fresh row."""
    touched = execute_count(session, update(Job).where(Job.id == job_id).values(updated_at=now))
    if touched == 0:
        return None
    return session.get(Job, job_id, populate_existing=True)


def lease_chunk(
    session: Session,
    chunk_id: str,
    owner: str,
    now: datetime,
    lease_until: datetime,
    max_attempts: int,
) -> int:
    """Lease a chunk that is queued, or whose lease expired, or that `owner` already holds."""
    claimable = or_(
        Chunk.state == ChunkState.QUEUED,
        and_(
            Chunk.state == ChunkState.LEASED,
            or_(Chunk.lease_expires_at < now, Chunk.lease_owner == owner),
        ),
    )
    return execute_count(
        session,
        update(Chunk)
        .where(Chunk.id == chunk_id, Chunk.attempts < max_attempts, claimable)
        .values(
            state=ChunkState.LEASED,
            lease_owner=owner,
            lease_expires_at=lease_until,
            heartbeat_at=now,
            attempts=Chunk.attempts + 1,
        ),
    )


def extend_lease(
    session: Session, chunk_id: str, owner: str, now: datetime, lease_until: datetime
) -> int:
    return execute_count(
        session,
        update(Chunk)
        .where(Chunk.id == chunk_id, Chunk.lease_owner == owner, Chunk.state == ChunkState.LEASED)
        .values(heartbeat_at=now, lease_expires_at=lease_until),
    )


def end_chunk(
    session: Session,
    chunk_id: str,
    to_state: ChunkState,
    now: datetime,
    *,
    owner: str | None = None,
    only_unleased: bool = False,
) -> int:
    """Close a chunk. With `owner`, only that lease holder may; with `only_unleased`,
    only a chunk that is queued or whose lease expired (no live worker holds it)."""
    conditions = [Chunk.id == chunk_id, Chunk.state.in_((ChunkState.QUEUED, ChunkState.LEASED))]
    if owner is not None:
        conditions += [Chunk.state == ChunkState.LEASED, Chunk.lease_owner == owner]
    if only_unleased:
        conditions.append(or_(Chunk.state == ChunkState.QUEUED, Chunk.lease_expires_at < now))
    return execute_count(
        session,
        update(Chunk)
        .where(*conditions)
        .values(state=to_state, finished_at=now, lease_owner=None, lease_expires_at=None),
    )


def start_job(session: Session, job_id: str, now: datetime) -> int:
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED)
        .values(state=JobState.RUNNING, started_at=now),
    )


def finish_item(
    session: Session,
    job_id: str,
    item_key: str,
    to_state: ItemState,
    now: datetime,
    **fields: Any,
) -> int:
    """First write wins: only a pending item changes."""
    return execute_count(
        session,
        update(Item)
        .where(Item.job_id == job_id, Item.item_key == item_key, Item.state == ItemState.PENDING)
        .values(state=to_state, finished_at=now, **fields),
    )


def fail_pending_items(
    session: Session,
    now: datetime,
    code: str,
    message: str,
    *,
    job_id: str,
    chunk_id: str | None = None,
) -> int:
    conditions = [Item.job_id == job_id, Item.state == ItemState.PENDING]
    if chunk_id is not None:
        conditions.append(Item.chunk_id == chunk_id)
    return execute_count(
        session,
        update(Item)
        .where(*conditions)
        .values(state=ItemState.FAILED, finished_at=now, error_code=code, error_message=message),
    )


def cancel_pending_items(session: Session, job_id: str, now: datetime) -> int:
    return execute_count(
        session,
        update(Item)
        .where(Item.job_id == job_id, Item.state == ItemState.PENDING)
        .values(state=ItemState.CANCELLED, finished_at=now),
    )


def add_progress(session: Session, job_id: str, *, done: int = 0, failed: int = 0) -> int:
    """Count finished items; refuses (0 rows) anything that would exceed the total."""
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.done + Job.failed + done + failed <= Job.total)
        .values(done=Job.done + done, failed=Job.failed + failed),
    )


def count_duplicate(session: Session, job_id: str) -> int:
    return execute_count(
        session, update(Job).where(Job.id == job_id).values(duplicates=Job.duplicates + 1)
    )


def finalise_if_complete(session: Session, job_id: str, now: datetime) -> int:
    """Move a job whose items are all finished to its final state, exactly once."""
    final_state = case(
        (Job.failed == 0, JobState.SUCCEEDED.value),
        (Job.done == 0, JobState.FAILED.value),
        else_=JobState.PARTIALLY_SUCCEEDED.value,
    )
    error_code = func.coalesce(
        Job.error_code, case((Job.done == 0, "job.all_items_failed"), else_=None)
    )
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_(_FINALISABLE), Job.done + Job.failed == Job.total)
        .values(state=final_state, finished_at=now, error_code=error_code),
    )


def request_cancel(session: Session, job_id: str, now: datetime) -> int:
    """Flag the job; a preparing or queued job (nothing ran) is cancelled at once (its
    preparation stops at its next slice), a running one moves to cancelling until its
    leased chunks let go."""
    idle = Job.state.in_((JobState.PREPARING, JobState.QUEUED))
    target = case((idle, JobState.CANCELLED.value), else_=JobState.CANCELLING.value)
    finished_at = case((idle, now), else_=Job.finished_at)
    cancellable = (JobState.PREPARING, JobState.QUEUED, JobState.RUNNING)
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_(cancellable))
        .values(cancel_requested=True, state=target, finished_at=finished_at),
    )


def cancel_idle_chunks(session: Session, job_id: str, now: datetime) -> int:
    """Close the chunks no live worker holds: queued ones and expired leases."""
    idle = or_(
        Chunk.state == ChunkState.QUEUED,
        and_(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at < now),
    )
    return execute_count(
        session,
        update(Chunk)
        .where(Chunk.job_id == job_id, idle)
        .values(
            state=ChunkState.CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None
        ),
    )


def finish_cancel(session: Session, job_id: str, now: datetime) -> int:
    """cancelling -> cancelled, once no chunk of the job is under a live lease."""
    live_lease = exists().where(
        Chunk.job_id == job_id,
        Chunk.state == ChunkState.LEASED,
        Chunk.lease_expires_at >= now,
    )
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.CANCELLING, not_(live_lease))
        .values(state=JobState.CANCELLED, finished_at=now),
    )


def fail_job(session: Session, job_id: str, now: datetime, code: str, message: str) -> int:
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.PREPARING, *_FINALISABLE)))
        .values(state=JobState.FAILED, finished_at=now, error_code=code, error_message=message),
    )


def mark_dispatched(session: Session, chunk_ids: Sequence[str], now: datetime) -> int:
    if not chunk_ids:
        return 0
    return execute_count(
        session,
        update(Chunk).where(Chunk.id.in_(list(chunk_ids))).values(dispatched_at=now),
    )


def add_prepared_items(session: Session, job_id: str, expected_total: int, n_items: int) -> int:
    """Count a slice of a preparing job's items, if nobody else added one since the
    caller read `expected_total` (two preparers of one job: the first slice wins)."""
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.PREPARING, Job.total == expected_total)
        .values(total=Job.total + n_items),
    )


def finish_preparing(session: Session, job_id: str, now: datetime) -> int:
    """preparing -> queued once every item is in (a job with no item is failed instead)."""
    return execute_count(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.PREPARING, Job.total > 0)
        .values(state=JobState.QUEUED, prepared_at=now),
    )
