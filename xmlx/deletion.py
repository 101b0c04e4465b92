"""Deleting jobs, models, datasets and uploads: at once for readers, in the background
for the store.

A DELETE is one transaction: check that nothing live depends on the thing, stamp its
`deleted_at` (every read skips such rows, so it is 404 from then on) and record a
`Purge`; the caller then sends the purge's message (`xmlx.messaging.send_purge`) and a
default-queue worker removes the objects and rows (`xmlx.purge`). A second DELETE of
the same thing is 404, because it is already gone for readers.

- A job still running is cancelled first (the cancel flag stops its workers between
  items; the purge waits for their leases to end before it touches the folder).
- A model used by a live job (queued, preparing, running, cancelling; its own training
  included) is `model.in_use` (409): cancel or delete those jobs first. Deleting a
  model deletes every job made with it (their results describe that model).
- A dataset a live training job reads is `dataset.in_use` (409). Its row stays as a
  tombstone while models trained on it exist (they name it); its objects go at once.
- Uploads are deleted by prefix: there is no row to stamp, so the pending purge is the
  mark. Until it is done every read skips what is under its prefix
  (`deleted_upload_prefixes`): workers read such an image as missing, listings and
  manifests under it are not found, and presigning a new upload there is refused
  (`uploads.purging`, 409: the purge could delete it). A second DELETE of the prefix,
  or of a folder inside it, is 404, as for the other kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple, TypeVar

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from xmlx import keys
from xmlx.db import SessionFactory, new_id, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.jobs.common import try_finish_cancel
from xmlx.models import FINAL_JOB_STATES, Dataset, Job, JobKind, Model, Purge, PurgeState
from xmlx.quotas import IN_FLIGHT_STATES
from xmlx.repository import work
from xmlx.storage import ObjectStore

Row = TypeVar("Row", Model, Dataset)
KIND_JOB = "job"
KIND_MODEL = "model"
KIND_DATASET = "dataset"
KIND_UPLOADS = "uploads"


def _purge(session: Session, tenant_id: str, kind: str, target: str, now: datetime) -> Purge:
    purge = Purge(
        id=new_id("prg"), tenant_id=tenant_id, kind=kind, target=target,
        state=PurgeState.PENDING, stage="start", objects_deleted=0, bytes_freed=0,
        rows_deleted=0, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(purge)
    session.flush()
    return purge


def delete_job(
    sessions: SessionFactory, tenant_id: str, job_id: str, *, now: datetime | None = None
) -> Purge:
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None or job.tenant_id != tenant_id or job.deleted_at is not None:
            raise XmlxError("job.not_found", f"no job {job_id}")
        if job.state not in FINAL_JOB_STATES:
            work.request_cancel(session, job_id, now)
            try_finish_cancel(session, job_id, now)
        job.deleted_at = now
        return _purge(session, tenant_id, KIND_JOB, job_id, now)


def _live_jobs(*conditions: object) -> object:
    return exists().where(
        Job.state.in_(IN_FLIGHT_STATES),
        Job.deleted_at.is_(None),
        *conditions,  # type: ignore[arg-type]
    )


def delete_model(
    sessions: SessionFactory, tenant_id: str, model_id: str, *, now: datetime | None = None
) -> Purge:
    now = now or utcnow()
    with session_scope(sessions) as session:
        model = _lock(session, Model, tenant_id, model_id)
        if model is None:
            raise XmlxError("model.not_found", f"no model {model_id}")
        if session.scalar(select(_live_jobs(Job.model_id == model_id))):  # type: ignore[call-overload]
            raise XmlxError(
                "model.in_use",
                f"model {model_id} is used by a queued or running job; cancel or delete "
                "that job first (GET /v1/jobs?state=running lists them)",
            )
        model.deleted_at = now
        session.execute(
            update(Job)
            .where(Job.model_id == model_id, Job.deleted_at.is_(None))
            .values(deleted_at=now),
            execution_options={"synchronize_session": False},
        )
        return _purge(session, tenant_id, KIND_MODEL, model_id, now)


def delete_dataset(
    sessions: SessionFactory, tenant_id: str, dataset_id: str, *, now: datetime | None = None
) -> Purge:
    now = now or utcnow()
    with session_scope(sessions) as session:
        dataset = _lock(session, Dataset, tenant_id, dataset_id)
        if dataset is None:
            raise XmlxError("dataset.not_found", f"no dataset {dataset_id}")
        training = select(Model.id).where(Model.dataset_id == dataset_id)
        live = _live_jobs(Job.kind == JobKind.TRAIN, Job.model_id.in_(training))
        if session.scalar(select(live)):  # type: ignore[call-overload]
            raise XmlxError(
                "dataset.in_use",
                f"dataset {dataset_id} is read by a training job in flight; cancel it or "
                "wait for it to end",
            )
        dataset.deleted_at = now
        return _purge(session, tenant_id, KIND_DATASET, dataset_id, now)


def delete_uploads(
    sessions: SessionFactory,
    store: ObjectStore,
    tenant_id: str,
    prefix: str,
    *,
    now: datetime | None = None,
) -> Purge:
    """`prefix` is the client's (validated here, e.g. `images/` or `batch1/a`)."""
    target = keys.uploads_prefix(tenant_id, prefix)
    now = now or utcnow()
    with session_scope(sessions) as session:
        covering = deleted_upload_covering(deleted_upload_prefixes(session, tenant_id), target)
        if covering is not None:
            raise XmlxError(
                "uploads.not_found",
                f"the uploads under {prefix!r} are already deleted (purge {covering.purge_id})",
            )
        if not store.list_keys(target, limit=1):
            raise XmlxError("uploads.not_found", f"no uploads under {prefix!r}")
        return _purge(session, tenant_id, KIND_UPLOADS, target, now)


class DeletedUploads(NamedTuple):
    """A pending uploads purge: everything whose storage key starts with `prefix`."""

    purge_id: str
    prefix: str


def deleted_upload_prefixes(session: Session, tenant_id: str) -> list[DeletedUploads]:
    """The tenant's uploads deleted and not purged yet (a handful at most: one query on
    the purges' (tenant, kind, target) index)."""
    stmt = select(Purge.id, Purge.target).where(
        Purge.tenant_id == tenant_id,
        Purge.kind == KIND_UPLOADS,
        Purge.state == PurgeState.PENDING,
    )
    return [DeletedUploads(row.id, row.target) for row in session.execute(stmt)]


def read_deleted_uploads(sessions: SessionFactory, tenant_id: str) -> list[DeletedUploads]:
    with session_scope(sessions) as session:
        return deleted_upload_prefixes(session, tenant_id)


def deleted_upload_covering(deleted: Sequence[DeletedUploads], key: str) -> DeletedUploads | None:
    """The pending purge whose prefix holds storage key (or prefix) `key`, if any."""
    return next((d for d in deleted if key.startswith(d.prefix)), None)


def without_deleted_uploads(
    deleted: Sequence[DeletedUploads], storage_keys: Iterable[str]
) -> Iterable[str]:
    """`storage_keys` less those a pending uploads purge removes."""
    if not deleted:
        return storage_keys
    return (key for key in storage_keys if deleted_upload_covering(deleted, key) is None)


def _lock(session: Session, table: type[Row], tenant_id: str, row_id: str) -> Row | None:
    stmt = select(table).where(
        table.id == row_id, table.tenant_id == tenant_id, table.deleted_at.is_(None)
    )
    return session.scalars(stmt.with_for_update()).one_or_none()


def get_purge(session: Session, tenant_id: str, purge_id: str) -> Purge | None:
    stmt = select(Purge).where(Purge.id == purge_id, Purge.tenant_id == tenant_id)
    return session.scalars(stmt).one_or_none()


def shown_target(purge: Purge) -> str:
    """What the client named: the id, or for uploads the prefix under its uploads."""
    if purge.kind == KIND_UPLOADS:
        return purge.target.removeprefix(keys.uploads_prefix(purge.tenant_id))
    return purge.target
