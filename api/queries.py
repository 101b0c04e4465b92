"""The few read queries the API needs that `xmlx.repository` does not have (yet).

Aggregates for job status and metrics. Kept together so they can move into the
repository as they are; each is one indexed statement.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from xmlx.models import Item, ItemState, Job, JobKind


def error_counts(session: Session, job_id: str) -> dict[str, int]:
    """Failed items of a job per error code (uses the (job_id, state, id) index)."""
    stmt = (
        select(Item.error_code, func.count())
        .where(Item.job_id == job_id, Item.state == ItemState.FAILED)
        .group_by(Item.error_code)
    )
    return {str(code or "unknown"): int(n) for code, n in session.execute(stmt).tuples()}


def jobs_by_state(session: Session) -> dict[tuple[str, str], int]:
    """Jobs of every tenant per (kind, state), for the metrics endpoint."""
    stmt = select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
    return {(kind, state): int(n) for kind, state, n in session.execute(stmt).tuples()}


def items_finished(session: Session) -> dict[str, int]:
    """Items finished so far over every job: {"succeeded": n, "failed": m, "duplicates": d}
    (duplicates: redundant deliveries and result writes that changed nothing)."""
    done, failed, duplicates = session.execute(
        select(
            func.coalesce(func.sum(Job.done), 0),
            func.coalesce(func.sum(Job.failed), 0),
            func.coalesce(func.sum(Job.duplicates), 0),
        )
    ).one()
    return {"succeeded": int(done), "failed": int(failed), "duplicates": int(duplicates)}


def training_job_id(session: Session, tenant_id: str, model_id: str) -> str | None:
    """The newest training job of a model."""
    stmt = (
        select(Job.id)
        .where(Job.tenant_id == tenant_id, Job.model_id == model_id, Job.kind == JobKind.TRAIN)
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
