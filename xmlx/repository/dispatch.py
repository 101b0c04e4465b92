"""The fair dispatcher's queries: which jobs have work, who is running what, and the
next chunk of one job. `xmlx.jobs.dispatch` ranks and leases; call these from there.

Only active jobs are looked at, and only chunks that are queued or whose lease ran out,
so each query touches the few rows that can run now, not the finished millions.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from xmlx.models import Chunk, ChunkState, Job, JobState
from xmlx.repository._exec import execute_count

_RUNNABLE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class RunnableJob:
    id: str
    tenant_id: str
    priority: str
    created_at: datetime
    served_at: datetime | None


def _claimable(now: datetime) -> object:
    return or_(
        Chunk.state == ChunkState.QUEUED,
        and_(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at < now),
    )


def runnable_jobs(session: Session, now: datetime, kinds: Collection[str]) -> list[RunnableJob]:
    """Active, not cancelled jobs of `kinds` with at least one chunk a worker may take."""
    has_work = exists().where(Chunk.job_id == Job.id, _claimable(now))  # type: ignore[arg-type]
    stmt = select(Job.id, Job.tenant_id, Job.priority, Job.created_at, Job.served_at).where(
        Job.state.in_(_RUNNABLE_JOB_STATES),
        Job.cancel_requested.is_(False),
        Job.kind.in_(list(kinds)),
        has_work,
    )
    return [RunnableJob(*row) for row in session.execute(stmt).tuples()]


def running_chunks_by_tenant(session: Session, now: datetime) -> dict[str, int]:
    """Chunks under a live lease, per tenant: the work each tenant has on the pool now."""
    stmt = (
        select(Job.tenant_id, func.count())
        .select_from(Chunk)
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at >= now)
        .group_by(Job.tenant_id)
    )
    return {tenant: int(count) for tenant, count in session.execute(stmt).tuples()}


def next_chunk(session: Session, job_id: str, now: datetime) -> Chunk | None:
    """The job's next chunk to run, locked (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite
    has one writer, whose lock the caller already holds): a chunk whose worker died
    comes first (it is the oldest work), then the queued chunks in order."""
    expired = and_(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at < now)
    for condition in (expired, Chunk.state == ChunkState.QUEUED):
        stmt = (
            select(Chunk)
            .where(Chunk.job_id == job_id, condition)
            .order_by(Chunk.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        chunk = session.scalars(stmt).first()
        if chunk is not None:
            return chunk
    return None


def mark_served(session: Session, job_id: str, now: datetime) -> int:
    return execute_count(session, update(Job).where(Job.id == job_id).values(served_at=now))


def holds_lease(session: Session, chunk_id: str, owner: str) -> bool:
    """Whether `owner` is the chunk's lease holder (call under the job's lock, which
    every claim takes first, so the answer holds until the transaction ends)."""
    stmt = select(Chunk.id).where(
        Chunk.id == chunk_id, Chunk.state == ChunkState.LEASED, Chunk.lease_owner == owner
    )
    return session.scalar(stmt) is not None


def hand_back(session: Session, chunk_id: str, owner: str, *, count_retry: bool = True) -> int:
    """The holder gives the chunk back after a transient failure: queued again, the
    attempt it spent refunded, one retry counted instead (`count_retry=False`: a
    training slice that ended on time and checkpointed, which is no failure at all)."""
    return execute_count(
        session,
        update(Chunk)
        .where(Chunk.id == chunk_id, Chunk.state == ChunkState.LEASED, Chunk.lease_owner == owner)
        .values(
            state=ChunkState.QUEUED,
            attempts=Chunk.attempts - 1,
            retries=Chunk.retries + int(count_retry),
            lease_owner=None,
            lease_expires_at=None,
        ),
    )
