"""Fair dispatch: a worker asks the database for the next chunk to run.

Broker messages are wake-ups (`xmlx.messaging`); what runs is decided here, so the
order of the queue stops mattering and one tenant's million-image job cannot starve
another tenant's ten images. The order, computed over the jobs that have a chunk to
run now:

1. tenants: fewest chunks under a live lease first (the work each has on the pool),
   then the tenant served least recently (`jobs.served_at`; never served first), so
   tenants take turns even with one worker;
2. inside a tenant: `priority` (high, normal, low), then the oldest job (FIFO);
3. inside a job: a chunk whose lease ran out (its worker died), then queued chunks in
   order.

The ranking is read without locks; the lease is taken in a transaction per candidate
job that locks the job row first (the lifecycle's lock order: job, chunk, items) and
the chunk `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite: the single writer's lock).
Two workers ranking at the same instant may both pick the same tenant once; the next
ranking sees their leases. A chunk past its attempts (or transient retries) is failed
on the way, like a claim of it would (`chunk.max_attempts` / `chunk.max_retries`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.common import count_and_finalise, fresh_job, settle_job, try_finish_cancel
from xmlx.jobs.types import Claim, ClaimStatus, PendingItem
from xmlx.models import PRIORITY_RANK, Chunk, ChunkState, JobKind, JobState, Priority
from xmlx.repository import dispatch, work
from xmlx.repository.dispatch import RunnableJob

ALL_KINDS = frozenset(kind.value for kind in JobKind)
log = logging.getLogger("xmlx.dispatch")
_EPOCH = datetime.min.replace(tzinfo=utcnow().tzinfo)


def rank_jobs(sessions: SessionFactory, kinds: Collection[str], now: datetime) -> list[str]:
    """Ids of the jobs with work to run, in the order the dispatcher serves them."""
    with session_scope(sessions) as session:
        runnable = dispatch.runnable_jobs(session, now, kinds)
        running = dispatch.running_chunks_by_tenant(session, now)
    served: dict[str, datetime] = {}
    for job in runnable:
        last = job.served_at or _EPOCH
        served[job.tenant_id] = max(served.get(job.tenant_id, _EPOCH), last)

    def key(job: RunnableJob) -> tuple[int, datetime, str, int, datetime, str]:
        rank = PRIORITY_RANK.get(job.priority, PRIORITY_RANK[Priority.NORMAL])
        tenant = job.tenant_id
        return (running.get(tenant, 0), served[tenant], tenant, rank, job.created_at, job.id)

    return [job.id for job in sorted(runnable, key=key)]


def claim_next(
    sessions: SessionFactory,
    owner: str,
    *,
    lease_seconds: int,
    max_attempts: int,
    max_retries: int,
    kinds: Collection[str] = ALL_KINDS,
    now: datetime | None = None,
    job_lock_wait_seconds: float = 5.0,
) -> Claim:
    """Lease the fairest chunk for `owner`; status NOTHING when no chunk can run.

    A job whose row another session holds longer than `job_lock_wait_seconds`
    (PostgreSQL) is passed over for the next one: the holder may be a worker frozen
    inside a transaction (a paused VM), which keeps the lock until the server ends its
    session (`Settings.database_idle_transaction_timeout_seconds`), and every worker
    waiting on it would idle that long. Healthy holders keep the row for milliseconds.
    The passed-over job's chunks are woken again by the reconciler."""
    now = now or utcnow()
    for job_id in rank_jobs(sessions, kinds, now):
        try:
            with session_scope(sessions) as session:
                _limit_lock_wait(session, job_lock_wait_seconds)
                claim = _lease_in_job(
                    session, job_id, owner, now, lease_seconds, (max_attempts, max_retries)
                )
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.warning("job %s is locked by another session; serving the next job", job_id)
            continue
        if claim is not None:
            return claim
    return Claim(ClaimStatus.NOTHING, "")


LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock wait past `lock_timeout`


def _limit_lock_wait(session: Session, seconds: float) -> None:
    if seconds > 0 and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {int(seconds * 1000)}"))


def _lease_in_job(
    session: Session,
    job_id: str,
    owner: str,
    now: datetime,
    lease_seconds: int,
    limits: tuple[int, int],
) -> Claim | None:
    job = work.lock_job(session, job_id, now)
    if job is None or job.cancel_requested or job.state not in (JobState.QUEUED, JobState.RUNNING):
        return None
    while (chunk := dispatch.next_chunk(session, job_id, now)) is not None:
        if exhaust_if_spent(session, chunk, now, *limits):
            continue
        lease_until = now + timedelta(seconds=lease_seconds)
        if work.lease_chunk(session, chunk.id, owner, now, lease_until, limits[0]) == 0:
            return None
        if work.start_job(session, job_id, now):
            settle_job(session, job_id)
        dispatch.mark_served(session, job_id, now)
        session.refresh(chunk)
        items = [
            PendingItem(i.id, i.seq, i.item_key) for i in repo.pending_items(session, chunk.id)
        ]
        job = fresh_job(session, job_id)
        return Claim(ClaimStatus.CLAIMED, chunk.id, job, chunk.attempts, items, chunk.retries)
    return None


def exhaust_if_spent(
    session: Session, chunk: Chunk, now: datetime, max_attempts: int, max_retries: int
) -> bool:
    """Fail a chunk that was started `max_attempts` times (or handed back after
    `max_retries` transient failures) without finishing, and its pending items: poison
    work stops here instead of looping. True when it did."""
    if chunk.attempts < max_attempts and chunk.retries < max_retries:
        return False
    if work.end_chunk(session, chunk.id, ChunkState.FAILED, now, only_unleased=True) == 0:
        return False
    if chunk.attempts >= max_attempts:
        code = "chunk.max_attempts"
        message = f"the chunk was started {chunk.attempts} times without finishing"
    else:
        code = "chunk.max_retries"
        message = f"the chunk failed {chunk.retries} times on transient errors"
    failed = work.fail_pending_items(
        session, now, code, message, job_id=chunk.job_id, chunk_id=chunk.id
    )
    count_and_finalise(session, chunk.job_id, now, failed=failed)
    return True


def hand_back_chunk(
    sessions: SessionFactory,
    chunk_id: str,
    owner: str,
    *,
    count_retry: bool = True,
    now: datetime | None = None,
) -> bool:
    """`owner` hit a transient failure: the chunk is queued again without spending an
    attempt (those protect against crashes and poison work), and its retries go up
    (not with `count_retry=False`: a training slice handing over to its continuation).
    False when `owner` no longer held it."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        chunk = repo.get_chunk(session, chunk_id)
        if chunk is None or work.lock_job(session, chunk.job_id, now) is None:
            return False
        handed = dispatch.hand_back(session, chunk_id, owner, count_retry=count_retry) == 1
        try_finish_cancel(session, chunk.job_id, now)
        return handed
