"""Item results: the first write wins, the last one finalises the job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    success = ItemSuccess(item_key, result, artifacts or {}, timings or {})
    return record_items_success(sessions, job_id, [success], now=now)[0]


@dataclass(frozen=True)
class ItemSuccess:
    item_key: str
    result: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)


def record_items_success(
    sessions: SessionFactory,
    job_id: str,
    items: Sequence[ItemSuccess],
    *,
    now: datetime | None = None,
) -> list[ItemOutcome]:
    """`record_item_success` for several items of one job in ONE transaction: one job
    lock, one counter update, one commit for a worker's whole batch (one per item made
    the database a visible share of a batch's time, bench/service_overhead.py)."""
    writes = [
        (item.item_key, ItemState.SUCCEEDED,
         {"result": item.result, "artifacts": item.artifacts, "timings": item.timings})
        for item in items
    ]  # fmt: skip
    return _record(sessions, job_id, writes, now)


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
    return _record(sessions, job_id, [(item_key, ItemState.FAILED, fields)], now)[0]


def _record(
    sessions: SessionFactory,
    job_id: str,
    writes: Sequence[tuple[str, ItemState, dict[str, Any]]],
    now: datetime | None,
) -> list[ItemOutcome]:
    """Each write is (item key, final state, columns). The counters move once, after
    every item, so only the last item recorded can carry ``finalised``."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        if work.lock_job(session, job_id, now) is None:
            raise JobError("job.not_found", f"no job {job_id}")
        recorded, done = [], 0
        for item_key, item_state, fields in writes:
            first = work.finish_item(session, job_id, item_key, item_state, now, **fields) == 1
            if not first:
                work.count_duplicate(session, job_id)
            recorded.append(first)
            done += first and item_state is ItemState.SUCCEEDED
        finalised = count_and_finalise(session, job_id, now, done=done, failed=sum(recorded) - done)
        job_state = fresh_job(session, job_id).state
        last = max((i for i, first in enumerate(recorded) if first), default=-1)
        return [
            ItemOutcome(first, job_state, finalised and i == last)
            for i, first in enumerate(recorded)
        ]
