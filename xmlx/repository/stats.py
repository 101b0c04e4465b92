"""Aggregates over jobs and items: per-state job counts, finished items, error codes.

Each is one statement on an index (or a small table scan of `jobs`), cheap enough for
the metrics endpoint and the status pages to run per request.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from xmlx.models import Item, ItemState, Job


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
