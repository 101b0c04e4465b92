"""Reads of jobs, chunks and items. The writes of the job lifecycle are in `work`."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from xmlx.models import Chunk, ChunkState, Item, Job, JobKind, JobState
from xmlx.repository.pagination import (
    Page,
    check_limit,
    decode_int_cursor,
    encode_cursor,
    newest_first_page,
)

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The job if it belongs to `tenant_id` and is not deleted; another tenant's job is
    simply not found."""
    stmt = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.deleted_at.is_(None))
    return session.scalars(stmt).one_or_none()


def get_job_unscoped(session: Session, job_id: str) -> Job | None:
    """For workers and the reconciler, which hold ids from our own rows."""
    return session.get(Job, job_id, populate_existing=True)


def get_job_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def training_job_id(session: Session, tenant_id: str, model_id: str) -> str | None:
    """The newest training job of a model."""
    stmt = (
        select(Job.id)
        .where(
            Job.tenant_id == tenant_id,
            Job.model_id == model_id,
            Job.kind == JobKind.TRAIN,
            Job.deleted_at.is_(None),
        )
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    state: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Job]:
    """The tenant's jobs, newest first, optionally filtered by state and kind."""
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.deleted_at.is_(None))
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    return newest_first_page(session, stmt, Job, limit, cursor)


def list_items(
    session: Session,
    tenant_id: str,
    job_id: str,
    *,
    state: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[Item] | None:
    """The job's items in submission order; None when the tenant has no such job."""
    check_limit(limit)
    if get_job(session, tenant_id, job_id) is None:
        return None
    stmt = select(Item).where(Item.job_id == job_id)
    if state is not None:
        stmt = stmt.where(Item.state == state)
    if cursor is not None:
        stmt = stmt.where(Item.id > decode_int_cursor(cursor))
    rows = list(session.scalars(stmt.order_by(Item.id).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows=rows, next_cursor=None)
    rows = rows[:limit]
    return Page(rows=rows, next_cursor=encode_cursor(rows[-1].id))


def get_item(session: Session, tenant_id: str, job_id: str, item_key: str) -> Item | None:
    stmt = (
        select(Item)
        .join(Job, Job.id == Item.job_id)
        .where(
            Job.tenant_id == tenant_id,
            Job.deleted_at.is_(None),
            Item.job_id == job_id,
            Item.item_key == item_key,
        )
    )
    return session.scalars(stmt).one_or_none()


def get_chunk(session: Session, chunk_id: str) -> Chunk | None:
    return session.get(Chunk, chunk_id, populate_existing=True)


def list_chunks(session: Session, job_id: str) -> list[Chunk]:
    return list(session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.seq)))


def pending_items(session: Session, chunk_id: str) -> list[Item]:
    """Items of a chunk still to do: a redelivered chunk skips what is already recorded."""
    stmt = select(Item).where(Item.chunk_id == chunk_id, Item.state == "pending")
    return list(session.scalars(stmt.order_by(Item.seq)))


def is_cancel_requested(session: Session, job_id: str) -> bool:
    stmt = select(Job.cancel_requested).where(Job.id == job_id)
    return bool(session.scalars(stmt).one_or_none())


def expired_chunks(session: Session, now: datetime, limit: int = 500) -> list[Chunk]:
    """Leased chunks whose lease ran out before `now` (their worker is presumed dead)."""
    stmt = (
        select(Chunk)
        .where(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at < now)
        .order_by(Chunk.lease_expires_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def chunks_to_redeliver(
    session: Session,
    now: datetime,
    grace: timedelta,
    limit: int = 500,
    *,
    max_queued: int | None = None,
) -> list[tuple[Chunk, Job]]:
    """Chunks of live jobs that no worker holds and nobody has (re)sent for `grace`.

    That is: leased chunks whose lease expired (a dead worker), and queued chunks whose
    message may be lost (a flushed Redis). A chunk sent within `grace` is left alone, so
    a reconciler tick does not flood the queue with copies of the same message. A
    queued chunk usually still has its message in a long queue: `max_queued` caps them
    (the caller's count of missing messages), the longest-unsent first.
    """
    cutoff = now - grace
    live = and_(
        Job.state.in_(ACTIVE_JOB_STATES),
        Job.created_at < cutoff,
        or_(Chunk.dispatched_at.is_(None), Chunk.dispatched_at < cutoff),
    )
    expired = and_(Chunk.state == ChunkState.LEASED, Chunk.lease_expires_at < now)
    stmt = select(Chunk, Job).join(Job, Job.id == Chunk.job_id)
    pairs = session.execute(
        stmt.where(live, expired).order_by(Job.created_at, Chunk.seq).limit(limit)
    ).tuples()
    found = [(chunk, job) for chunk, job in pairs]
    room = limit - len(found) if max_queued is None else min(limit - len(found), max_queued)
    if room > 0:
        queued = stmt.where(live, Chunk.state == ChunkState.QUEUED)
        order = (Chunk.dispatched_at.asc().nulls_first(), Job.created_at, Chunk.seq)
        found += session.execute(queued.order_by(*order).limit(room)).tuples()
    return found


def count_queued_chunks(session: Session) -> int:
    """Chunks of live jobs waiting for a worker (each should have a message queued)."""
    stmt = (
        select(func.count())
        .select_from(Chunk)
        .join(Job, Job.id == Chunk.job_id)
        .where(Job.state.in_(ACTIVE_JOB_STATES), Chunk.state == ChunkState.QUEUED)
    )
    return int(session.scalar(stmt) or 0)


def has_live_lease(session: Session, job_id: str, now: datetime) -> bool:
    live = exists().where(
        Chunk.job_id == job_id,
        Chunk.state == ChunkState.LEASED,
        Chunk.lease_expires_at >= now,
    )
    return bool(session.scalar(select(live)))


def item_key_at(session: Session, job_id: str, seq: int) -> str | None:
    """The key of the job's item number `seq` (where a resumed preparation goes on)."""
    stmt = select(Item.item_key).where(Item.job_id == job_id, Item.seq == seq)
    return session.scalars(stmt).first()


def chunk_ids(session: Session, job_id: str) -> list[str]:
    stmt = select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.seq)
    return list(session.scalars(stmt))


def stalled_preparations(session: Session, before: datetime, limit: int = 100) -> list[Job]:
    """Preparing jobs nobody has advanced since `before` (their task was lost)."""
    stmt = (
        select(Job)
        .where(Job.state == JobState.PREPARING, Job.updated_at < before)
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))
