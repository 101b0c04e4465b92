"""Datasets and models: what a tenant has uploaded and trained. Every read is tenant-scoped
and skips soft-deleted rows (`deleted_at`; `xmlx.deletion`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from xmlx import keys
from xmlx.db import new_id, utcnow
from xmlx.models import Dataset, Model, ModelState
from xmlx.repository._exec import execute_count
from xmlx.repository.pagination import Page, newest_first_page


def create_dataset(
    session: Session,
    tenant_id: str,
    *,
    name: str = "",
    manifest_suffix: str = "csv",
    n_images: int = 0,
    n_labels: int = 0,
    empty_rows: int = 0,
    label_counts: dict[str, Any] | None = None,
    image_prefix: str | None = None,
    images_prefix: str | None = None,
) -> Dataset:
    """A dataset row; its storage prefix and manifest key are built here, never given.

    `image_prefix` is the resolved storage prefix of its images (the caller builds it
    with `xmlx.keys`), `images_prefix` the folder as the client named it.
    """
    dataset_id = new_id("ds")
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        storage_prefix=keys.dataset_prefix(tenant_id, dataset_id),
        manifest_key=keys.dataset_manifest_key(tenant_id, dataset_id, manifest_suffix),
        n_images=n_images,
        n_labels=n_labels,
        empty_rows=empty_rows,
        label_counts=label_counts or {},
        image_prefix=image_prefix,
        images_prefix=images_prefix,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(
    session: Session, tenant_id: str, dataset_id: str, *, deleted: bool = False
) -> Dataset | None:
    """The tenant's dataset; with `deleted`, also a deleted one that models still name
    (its row stays as a tombstone with their label counts; its objects are gone)."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    if not deleted:
        stmt = stmt.where(Dataset.deleted_at.is_(None))
    return session.scalars(stmt).one_or_none()


def dataset_ids_with_images_at(
    session: Session, tenant_id: str, image_prefix: str, *, limit: int = 4
) -> list[str]:
    """The tenant's datasets whose images folder is `image_prefix`, newest first (rows
    made before migration 0002 have no folder column and are not found here)."""
    stmt = (
        select(Dataset.id)
        .where(
            Dataset.tenant_id == tenant_id,
            Dataset.image_prefix == image_prefix,
            Dataset.deleted_at.is_(None),
        )
        .order_by(Dataset.created_at.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def list_datasets(
    session: Session, tenant_id: str, *, limit: int = 50, cursor: str | None = None
) -> Page[Dataset]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    return newest_first_page(session, stmt, Dataset, limit, cursor)


def create_model(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    *,
    name: str = "",
    params: dict[str, Any] | None = None,
) -> Model:
    now = utcnow()
    model = Model(
        id=new_id("mdl"),
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        name=name,
        state=ModelState.PENDING,
        params=params or {},
        metrics={},
        history={},
        created_at=now,
        updated_at=now,
    )
    session.add(model)
    session.flush()
    return model


def get_model(session: Session, tenant_id: str, model_id: str) -> Model | None:
    stmt = select(Model).where(
        Model.id == model_id, Model.tenant_id == tenant_id, Model.deleted_at.is_(None)
    )
    return session.scalars(stmt).one_or_none()


def get_model_unscoped(session: Session, model_id: str) -> Model | None:
    """For workers, which act on ids from a job row they already trust."""
    return session.get(Model, model_id)


def list_models(
    session: Session,
    tenant_id: str,
    *,
    state: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Model]:
    stmt = select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    if state is not None:
        stmt = stmt.where(Model.state == state)
    return newest_first_page(session, stmt, Model, limit, cursor)


def transition_model(
    session: Session,
    model_id: str,
    from_states: Iterable[str],
    to_state: str,
    **fields: Any,
) -> bool:
    """Compare-and-set a model's state (and set `fields`, e.g. artifact_key, metrics)."""
    statement = (
        update(Model)
        .where(Model.id == model_id, Model.state.in_(list(from_states)))
        .values(state=to_state, updated_at=utcnow(), **fields)
    )
    changed = execute_count(session, statement) == 1
    if changed:
        session.get(Model, model_id, populate_existing=True)
    return changed
