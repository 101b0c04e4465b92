"""The orphan sweep: files in a finished job's folder that no item row names.

A worker writes an attempt's artifacts, then records their keys on the item rows; a
crash between the two (a database that died mid-commit, RELIABILITY.md scenario 5)
leaves files under their attempt's folder that nothing names, and no later attempt
re-records those items to sweep them. Once the job is final nobody writes there any
more, so the purge sweep (`xmlx.purge_sweep`) checks each finished job once: every
file under `items/` whose folder is not the folder of a recorded artifact goes.

Memory: the set of named folders, one short string per recorded item (about 100 bytes
each); jobs over `max_items` are marked checked and left alone rather than held whole.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from xmlx import keys
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.models import FINAL_JOB_STATES, Item, Job
from xmlx.quotas import add_stored_bytes
from xmlx.storage import ObjectStore
from xmlx.storage.base import MAX_DELETE_BATCH

log = logging.getLogger("xmlx.orphans")
ITEM_PAGE = 5000


def named_folders(session: Session, job_id: str) -> set[str]:
    """The folders (`.../items/{hash}/{attempt}`) that the job's item rows name."""
    folders: set[str] = set()
    last = 0
    while True:
        stmt = (
            select(Item.id, Item.artifacts)
            .where(Item.job_id == job_id, Item.id > last)
            .order_by(Item.id)
            .limit(ITEM_PAGE)
        )
        rows = list(session.execute(stmt).tuples())
        for _, artifacts in rows:
            for key in (artifacts or {}).values():
                folders.add(str(key).rsplit("/", 1)[0])
        if len(rows) < ITEM_PAGE:
            return folders
        last = rows[-1][0]


def sweep_job(
    sessions: SessionFactory,
    store: ObjectStore,
    job_id: str,
    *,
    max_items: int = 200_000,
    now: datetime | None = None,
) -> int:
    """Delete the finished job's orphan files; mark it checked. Returns how many went."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.state not in FINAL_JOB_STATES or job.deleted_at is not None:
            return 0
        tenant_id, total = job.tenant_id, job.total
        folders = named_folders(session, job_id) if total <= max_items else None
    removed = 0
    if folders is None:
        log.warning("orphan sweep skipped", extra={"job_id": job_id, "items": total})
    else:
        removed = _delete_unnamed(sessions, store, tenant_id, job_id, folders)
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.orphans_checked_at = now
    if removed:
        log.info("orphan files removed", extra={"job_id": job_id, "files": removed})
    return removed


def _delete_unnamed(
    sessions: SessionFactory, store: ObjectStore, tenant_id: str, job_id: str, folders: set[str]
) -> int:
    prefix = keys.job_prefix(tenant_id, job_id) + "items/"
    removed = 0
    start_after: str | None = None
    while True:
        page = store.list_sizes(prefix, limit=MAX_DELETE_BATCH, start_after=start_after)
        orphans = [(key, size) for key, size in page if key.rsplit("/", 1)[0] not in folders]
        if orphans:
            store.delete_many([key for key, _ in orphans])
            with session_scope(sessions) as session:
                add_stored_bytes(session, tenant_id, -sum(size for _, size in orphans))
            removed += len(orphans)
        if len(page) < MAX_DELETE_BATCH:
            return removed
        start_after = page[-1][0]


def jobs_due(session: Session, before: datetime, limit: int = 20) -> list[str]:
    """Finished, live jobs not yet checked, finished before `before` (a grace for the
    last worker's clean-up of its own attempt)."""
    stmt = (
        select(Job.id)
        .where(
            Job.state.in_(list(FINAL_JOB_STATES)),
            Job.orphans_checked_at.is_(None),
            Job.deleted_at.is_(None),
            Job.finished_at < before,
        )
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))
