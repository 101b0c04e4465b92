"""The background half of a DELETE: remove a purge's objects and rows, a page at a time.

Each step is one listing page (<= 1,000 keys, one S3 DeleteObjects call) or one batch
of rows, committed with the purge's progress (`stage`, `cursor`, counters), so a
killed purge goes on from its last page. Every step is idempotent -- deleting what is
already gone does nothing -- so two runs of one purge (a redelivered message, the sweep
re-sending a purge whose lease ran out), or a model purge and a job purge over the same
job, are safe; the lease (`Purge.lease_until`) only keeps them from doubling the work.

Stages by kind (`xmlx.deletion`):
- job: `wait` (until no worker holds a lease on its chunks), `objects` (its folder),
  `rows` (items in batches, then chunks, then the job row);
- model: `jobs` (each of its jobs as above), `objects` (the model folder), `rows`
  (the model row, and its dataset's tombstone if nothing else names it);
- dataset: `objects` (the dataset folder), `rows` (the row, unless models name it);
- uploads: `objects` (everything under the prefix).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from xmlx import keys
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.deletion import KIND_DATASET, KIND_JOB, KIND_MODEL, KIND_UPLOADS
from xmlx.models import Chunk, Dataset, Item, Job, Model, Purge, PurgeState
from xmlx.quotas import add_stored_bytes
from xmlx.repository._exec import execute_count
from xmlx.repository.jobs import has_live_lease
from xmlx.storage import ObjectStore

OBJECT_PAGE = 1000  # S3's DeleteObjects limit
ROW_BATCH = 5000

STAGES: dict[str, tuple[str, ...]] = {
    KIND_JOB: ("wait", "objects", "rows"),
    KIND_MODEL: ("jobs", "objects", "rows"),
    KIND_DATASET: ("objects", "rows"),
    KIND_UPLOADS: ("objects",),
}
# Outcomes of `run_purge`
DONE, PAUSED, WAITING, BUSY, MISSING = "done", "paused", "waiting", "busy", "missing"


def run_purge(
    sessions: SessionFactory,
    store: ObjectStore,
    purge_id: str,
    *,
    budget_seconds: float = 60.0,
    lease_seconds: int = 120,
    now: Callable[[], datetime] = utcnow,
) -> str:
    """Work on the purge until it is done or the budget is spent (`paused`: send it
    again), or it must wait for a job's workers (`waiting`). `busy`: another run holds
    it; `missing`: no such purge."""
    held_until = now() + timedelta(seconds=lease_seconds)
    if not _claim(sessions, purge_id, now(), held_until):
        with session_scope(sessions) as session:
            found = session.get(Purge, purge_id)
            if found is None:
                return MISSING
            return DONE if found.state == PurgeState.DONE else BUSY
    deadline = time.monotonic() + budget_seconds
    try:
        while True:  # at least one step, however small the budget
            at = now()
            held_until = at + timedelta(seconds=lease_seconds)
            outcome = _step(sessions, store, purge_id, at, held_until)
            if outcome != PAUSED or time.monotonic() >= deadline:
                break
    finally:
        # Let the next message in at once -- unless the lease ran out meanwhile and
        # another run holds it now.
        with session_scope(sessions) as session:
            release = (
                update(Purge)
                .where(Purge.id == purge_id, Purge.lease_until == held_until)
                .values(lease_until=None)
            )
            execute_count(session, release)
    return outcome


def _claim(sessions: SessionFactory, purge_id: str, at: datetime, until: datetime) -> bool:
    with session_scope(sessions) as session:
        claimable = or_(Purge.lease_until.is_(None), Purge.lease_until < at)
        statement = (
            update(Purge)
            .where(Purge.id == purge_id, Purge.state == PurgeState.PENDING, claimable)
            .values(lease_until=until)
        )
        return execute_count(session, statement) == 1


def _step(
    sessions: SessionFactory, store: ObjectStore, purge_id: str, at: datetime, until: datetime
) -> str:
    """One page or batch of the purge's current stage, committed with its progress."""
    with session_scope(sessions) as session:
        purge = session.get(Purge, purge_id, populate_existing=True)
        if purge is None or purge.state == PurgeState.DONE:
            return DONE
        if purge.stage == "start":
            purge.stage = STAGES[purge.kind][0]
        progress = _STAGE_WORK[purge.stage](session, store, purge)
        purge.updated_at = at
        purge.lease_until = until
        if progress == WAITING:
            return WAITING
        if progress == DONE:
            stages = STAGES[purge.kind]
            position = stages.index(purge.stage) + 1
            purge.cursor = None
            if position == len(stages):
                purge.state, purge.stage, purge.finished_at = PurgeState.DONE, "done", at
                return DONE
            purge.stage = stages[position]
    return PAUSED


def _wait(session: Session, store: ObjectStore, purge: Purge) -> str:
    job = session.get(Job, purge.target)
    if job is not None and has_live_lease(session, job.id, utcnow()):
        return WAITING  # a cancelled chunk still finishing: its files would land later
    return DONE


def _objects(session: Session, store: ObjectStore, purge: Purge) -> str:
    return _delete_page(session, store, purge, _folder(session, purge))


def _folder(session: Session, purge: Purge) -> str:
    tenant = purge.tenant_id
    if purge.kind == KIND_JOB:
        return keys.job_prefix(tenant, purge.target)
    if purge.kind == KIND_MODEL:
        return keys.model_prefix(tenant, purge.target)
    if purge.kind == KIND_DATASET:
        return keys.dataset_prefix(tenant, purge.target)
    return purge.target


def _delete_page(session: Session, store: ObjectStore, purge: Purge, prefix: str) -> str:
    """Delete one listing page after `cursor`; DONE when a listing from the start of the
    folder finds nothing (a write that landed behind the cursor is caught there)."""
    page = store.list_sizes(prefix, limit=OBJECT_PAGE, start_after=purge.cursor)
    if page:
        store.delete_many([key for key, _ in page])
        freed = sum(size for _, size in page)
        purge.objects_deleted += len(page)
        purge.bytes_freed += freed
        add_stored_bytes(session, purge.tenant_id, -freed)
    if len(page) == OBJECT_PAGE:
        purge.cursor = page[-1][0]
        return PAUSED
    if purge.cursor is None and not page:
        return DONE
    purge.cursor = None  # one more listing from the start
    return PAUSED


def _rows(session: Session, store: ObjectStore, purge: Purge) -> str:
    if purge.kind == KIND_JOB:
        return _job_rows(session, purge, purge.target)
    if purge.kind == KIND_MODEL:
        purge.rows_deleted += execute_count(session, delete(Model).where(Model.id == purge.target))
    _drop_dataset_tombstones(session, purge)
    return DONE


def _drop_dataset_tombstones(session: Session, purge: Purge) -> None:
    """Deleted datasets of the tenant that no model names any more."""
    named = exists().where(Model.dataset_id == Dataset.id)
    stmt = delete(Dataset).where(
        Dataset.tenant_id == purge.tenant_id, Dataset.deleted_at.is_not(None), ~named
    )
    purge.rows_deleted += execute_count(session, stmt)


def _job_rows(session: Session, purge: Purge, job_id: str) -> str:
    """One batch of the job's items; once none is left, its chunks and the job row."""
    batch = select(Item.id).where(Item.job_id == job_id).order_by(Item.id).limit(ROW_BATCH)
    removed = execute_count(session, delete(Item).where(Item.id.in_(batch.scalar_subquery())))
    if removed:
        purge.rows_deleted += removed
        return PAUSED
    purge.rows_deleted += execute_count(session, delete(Chunk).where(Chunk.job_id == job_id))
    purge.rows_deleted += execute_count(session, delete(Job).where(Job.id == job_id))
    return DONE


def _jobs(session: Session, store: ObjectStore, purge: Purge) -> str:
    """The model's jobs one at a time: folder first, then rows (stateless: the folder
    listing restarts from its start for each job, so no cursor is shared)."""
    stmt = select(Job.id).where(Job.model_id == purge.target).order_by(Job.id).limit(1)
    job_id = session.scalars(stmt).first()
    if job_id is None:
        return DONE
    if has_live_lease(session, job_id, utcnow()):
        return WAITING
    job = session.get(Job, job_id)
    assert job is not None
    prefix = keys.job_prefix(job.tenant_id, job_id)
    if store.list_keys(prefix, limit=1):
        purge.cursor = None
        _delete_page(session, store, purge, prefix)
        return PAUSED
    _job_rows(session, purge, job_id)
    return PAUSED


_STAGE_WORK: dict[str, Callable[[Session, ObjectStore, Purge], str]] = {
    "wait": _wait,
    "objects": _objects,
    "rows": _rows,
    "jobs": _jobs,
}
