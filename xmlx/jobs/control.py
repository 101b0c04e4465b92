"""Cancel, whole-job failure, and the reconciler's view of chunks to resend."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.common import fresh_job, settle_job, try_finish_cancel
from xmlx.jobs.types import ChunkRef, JobError
from xmlx.models import Job, JobState
from xmlx.repository import work
from xmlx.repository.jobs import ACTIVE_JOB_STATES


def request_cancel(
    sessions: SessionFactory, tenant_id: str, job_id: str, *, now: datetime | None = None
) -> Job:
    """Ask a job to stop. A final job is returned unchanged (check its state)."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None or job.tenant_id != tenant_id or job.deleted_at is not None:
            raise JobError("job.not_found", f"no job {job_id}")
        work.request_cancel(session, job_id, now)
        try_finish_cancel(session, job_id, now)
        return fresh_job(session, job_id)


def fail_job(
    sessions: SessionFactory, job_id: str, code: str, message: str, *, now: datetime | None = None
) -> Job | None:
    """Fail a whole job (e.g. its model cannot load): pending items fail with `code`."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None:
            return None
        if job.state in (JobState.PREPARING, *ACTIVE_JOB_STATES):
            failed = work.fail_pending_items(session, now, code, message, job_id=job_id)
            work.add_progress(session, job_id, failed=failed)
            work.cancel_idle_chunks(session, job_id, now)
            work.fail_job(session, job_id, now, code, message)
            settle_job(session, job_id)
        return fresh_job(session, job_id)


def reconcile(
    sessions: SessionFactory,
    *,
    grace_seconds: int,
    limit: int = 500,
    queued_messages: int | None = None,
    now: datetime | None = None,
) -> list[ChunkRef]:
    """Chunks to send again (stranded in the queue or under an expired lease), marked as
    dispatched now; cancelled jobs whose workers died are closed instead.

    `queued_messages`: the broker's queue length, if known. Only as many queued chunks
    as have no message left (queued chunks minus messages) are sent again; without it,
    every queued chunk past the grace is, which in a queue longer than the grace adds
    a copy of every waiting message at each tick.
    """
    now = now or utcnow()
    grace = timedelta(seconds=grace_seconds)
    with session_scope(sessions) as session:
        max_queued = None
        if queued_messages is not None:
            max_queued = max(0, repo.count_queued_chunks(session) - queued_messages)
        pairs = repo.chunks_to_redeliver(session, now, grace, limit, max_queued=max_queued)
        refs = [ChunkRef(c.id, j.id, j.kind) for c, j in pairs if not j.cancel_requested]
        cancelling = {j.id for _, j in pairs if j.cancel_requested}
    for job_id in sorted(cancelling):
        with session_scope(sessions) as session:
            if work.lock_job(session, job_id, now) is not None:
                try_finish_cancel(session, job_id, now)
    mark_dispatched(sessions, [ref.chunk_id for ref in refs], now=now)
    return refs


def mark_dispatched(
    sessions: SessionFactory, chunk_ids: Sequence[str], *, now: datetime | None = None
) -> None:
    """Record that messages for these chunks were sent (the reconciler waits a grace)."""
    with session_scope(sessions) as session:
        work.mark_dispatched(session, chunk_ids, now or utcnow())
