"""Item results: the first write wins, the last one finalises the job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.common import count_and_finalise, fresh_job
from xmlx.jobs.types import ItemOutcome, JobError
from xmlx.models import ItemState
from xmlx.repository import work


def record_item_success(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    result: dict[str, Any],
    artifacts: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    fields = {"result": result, "artifacts": artifacts or {}, "timings": timings or {}}
    return _record(sessions, job_id, item_key, ItemState.SUCCEEDED, now, fields)


def record_item_failure(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    code: str,
    message: str,
    timings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    fields = {"error_code": code, "error_message": message, "timings": timings or {}}
    return _record(sessions, job_id, item_key, ItemState.FAILED, now, fields)


def _record(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    state: ItemState,
    now: datetime | None,
    fields: dict[str, Any],
) -> ItemOutcome:
    now = now or utcnow()
    with session_scope(sessions) as session:
        if work.lock_job(session, job_id, now) is None:
            raise JobError("job.not_found", f"no job {job_id}")
        if work.finish_item(session, job_id, item_key, state, now, **fields) == 0:
            work.count_duplicate(session, job_id)
            return ItemOutcome(False, fresh_job(session, job_id).state, False)
        succeeded = state is ItemState.SUCCEEDED
        finalised = count_and_finalise(
            session, job_id, now, done=int(succeeded), failed=int(not succeeded)
        )
        return ItemOutcome(True, fresh_job(session, job_id).state, finalised)
