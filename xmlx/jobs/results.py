"""Item results: the first write wins, the last one finalises the job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from xmlcore.result_metrics import add_metrics, item_metrics
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.common import count_and_finalise, fresh_job
from xmlx.jobs.types import ItemOutcome, JobError, LeaseRef
from xmlx.models import ItemState, ModelState
from xmlx.repository import dispatch, work


def record_item_success(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    result: dict[str, Any],
    artifacts: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    lease: LeaseRef | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    success = ItemSuccess(item_key, result, artifacts or {}, timings or {})
    return record_items_success(sessions, job_id, [success], lease=lease, now=now)[0]


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
    lease: LeaseRef | None = None,
    now: datetime | None = None,
) -> list[ItemOutcome]:
    """`record_item_success` for several items of one job in ONE transaction: one job
    lock, one counter update, one commit for a worker's whole batch (one per item made
    the database a visible share of a batch's time, bench/service_overhead.py).

    With `lease`, nothing is recorded unless its owner holds the chunk's lease: a worker
    that lost it (stopped past its lease, another took over) leaves no trace."""
    writes = [
        (item.item_key, ItemState.SUCCEEDED,
         {"result": item.result, "artifacts": item.artifacts, "timings": item.timings})
        for item in items
    ]  # fmt: skip
    return _record(sessions, job_id, writes, now, lease)


def record_item_failure(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    code: str,
    message: str,
    timings: dict[str, Any] | None = None,
    lease: LeaseRef | None = None,
    now: datetime | None = None,
) -> ItemOutcome:
    fields = {"error_code": code, "error_message": message, "timings": timings or {}}
    return _record(sessions, job_id, [(item_key, ItemState.FAILED, fields)], now, lease)[0]


def _record(
    sessions: SessionFactory,
    job_id: str,
    writes: Sequence[tuple[str, ItemState, dict[str, Any]]],
    now: datetime | None,
    lease: LeaseRef | None = None,
    on_recorded: Callable[[Session], None] | None = None,
) -> list[ItemOutcome]:
    """Each write is (item key, final state, columns). The counters move once, after
    every item, so only the last item recorded can carry ``finalised``."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        if lease is not None and not dispatch.holds_lease(session, lease.chunk_id, lease.owner):
            return [ItemOutcome(False, job.state, False, lease_held=False) for _ in writes]
        recorded, done, sums = [], 0, job.result_metrics
        for item_key, item_state, fields in writes:
            first = work.finish_item(session, job_id, item_key, item_state, now, **fields) == 1
            if not first:
                work.count_duplicate(session, job_id)
            recorded.append(first)
            succeeded = first and item_state is ItemState.SUCCEEDED
            done += succeeded
            if succeeded and (metrics := item_metrics(fields.get("result") or {})):
                sums = add_metrics(sums, metrics)
        if sums is not job.result_metrics:
            # The job row is locked (lock_job): read, add, write is safe.
            job.result_metrics = sums
        if on_recorded is not None and any(recorded):
            on_recorded(session)
        finalised = count_and_finalise(session, job_id, now, done=done, failed=sum(recorded) - done)
        job_state = fresh_job(session, job_id).state
        last = max((i for i, first in enumerate(recorded) if first), default=-1)
        return [
            ItemOutcome(first, job_state, finalised and i == last)
            for i, first in enumerate(recorded)
        ]


def record_model_trained(
    sessions: SessionFactory,
    job_id: str,
    item_key: str,
    *,
    lease: LeaseRef,
    model_id: str,
    artifact_key: str,
    result: dict[str, Any],
    model_fields: dict[str, Any],
    now: datetime | None = None,
) -> ItemOutcome:
    """The training item's result and the model's `ready` state (with the key of the
    `model.zip` this attempt wrote) in ONE transaction, only if `lease` still holds: a
    trainer that lost its lease cannot make its own file the model's current one."""
    sources = [state for state in ModelState if state != ModelState.READY]

    def make_ready(session: Session) -> None:
        repo.transition_model(
            session, model_id, sources, ModelState.READY, artifact_key=artifact_key, **model_fields
        )

    artifacts = {"model.zip": artifact_key}
    fields = {"result": result, "artifacts": artifacts, "timings": {}}
    writes = [(item_key, ItemState.SUCCEEDED, fields)]
    return _record(sessions, job_id, writes, now, lease, make_ready)[0]
