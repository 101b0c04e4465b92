"""The outbox side: a job's final state queues its webhook in the same transaction.

`record_final_state` is called by `xmlx.jobs.common.settle_job`, which every lifecycle
transaction that can move a job calls before it commits (finalisation by the last
item, cancel, whole-job failure, the reconciler closing a job). So the row exists if
and only if the final state was committed, whatever happens to the process afterwards;
the unique (job_id, event) makes a second call, in this or another transaction, a
no-op. A job reaches one final state once (the state moves are compare-and-set), so a
job has at most one delivery.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from xmlx.db import utcnow
from xmlx.models import FINAL_JOB_STATES, Job, JobState
from xmlx.repository import webhooks as repo
from xmlx.webhooks.signing import new_secret


def event_name(state: str) -> str:
    return f"job.{state}"


def target_url(session: Session, job: Job) -> str | None:
    if job.callback_url:
        return job.callback_url
    settings = repo.get_settings(session, job.tenant_id)
    return settings.url if settings is not None else None


def record_final_state(session: Session, job: Job) -> bool:
    """Queue the POST of `job`'s final state, if it is final and has a URL to go to."""
    if JobState(job.state) not in FINAL_JOB_STATES:
        return False
    url = target_url(session, job)
    if url is None:
        return False
    repo.ensure_secret(session, job.tenant_id, new_secret())
    event = event_name(job.state)
    return repo.add_delivery(
        session, job_id=job.id, tenant_id=job.tenant_id, event=event, url=url,
        payload=job_summary(job, event),
    )  # fmt: skip


def job_summary(job: Job, event: str) -> dict[str, Any]:
    """The webhook body: what a poller would read at the end, minus the parameters."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    return {
        "event": event,
        "occurred_at": iso(job.finished_at or utcnow()),
        "job": {
            "id": job.id,
            "kind": job.kind,
            "state": job.state,
            "model_id": job.model_id,
            "progress": {"total": job.total, "done": job.done, "failed": job.failed},
            "error": error,
            "created_at": iso(job.created_at),
            "finished_at": iso(job.finished_at),
            "links": {"self": f"/v1/jobs/{job.id}", "results": f"/v1/jobs/{job.id}/results"},
        },
    }
