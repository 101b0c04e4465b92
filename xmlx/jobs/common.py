"""Steps shared by the lifecycle transactions (call inside one)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from xmlx import repository as repo
from xmlx.jobs.model_state import follow_job
from xmlx.models import Job, JobState
from xmlx.repository import work
from xmlx.webhooks.outbox import record_final_state


def fresh_job(session: Session, job_id: str) -> Job:
    job = repo.get_job_unscoped(session, job_id)
    assert job is not None
    return job


def count_and_finalise(
    session: Session, job_id: str, now: datetime, *, done: int = 0, failed: int = 0
) -> bool:
    if done or failed:
        work.add_progress(session, job_id, done=done, failed=failed)
    finalised = work.finalise_if_complete(session, job_id, now) == 1
    if finalised:
        settle_job(session, job_id)
    return finalised


def settle_job(session: Session, job_id: str) -> None:
    """What follows a job's (new) state, in the transaction that moved it: a training
    job's model (`xmlx.jobs.model_state`), and a final state's webhook in the outbox
    (`xmlx.webhooks.outbox`). Every path that moves a job calls this before commit."""
    job = fresh_job(session, job_id)
    follow_job(session, job)
    record_final_state(session, job)


def try_finish_cancel(session: Session, job_id: str, now: datetime) -> None:
    job = fresh_job(session, job_id)
    if not job.cancel_requested or job.state not in (JobState.CANCELLING, JobState.CANCELLED):
        return
    work.cancel_idle_chunks(session, job_id, now)
    work.finish_cancel(session, job_id, now)
    if fresh_job(session, job_id).state == JobState.CANCELLED:
        work.cancel_pending_items(session, job_id, now)
    settle_job(session, job_id)
