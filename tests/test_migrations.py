"""Alembic migrations: they round-trip, match the models, and guard start-up."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from xmlx import migrate
from xmlx.db import Base, create_engine, utcnow


def test_upgrade_downgrade_upgrade(make_database_url: Callable[[], str]) -> None:
    url = make_database_url()
    engine = create_engine(url)
    try:
        migrate.upgrade(url)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert {"jobs", "items", "chunks"} <= set(inspect(engine).get_table_names())
        migrate.downgrade(url, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(url)
        migrate.ensure_migrated(engine)
    finally:
        engine.dispose()


def test_0002_adds_the_dataset_images_columns_and_downgrade_drops_them(
    make_database_url: Callable[[], str],
) -> None:
    url = make_database_url()
    engine = create_engine(url)
    try:
        migrate.upgrade(url, "0001")
        with engine.begin() as connection:  # a dataset written by the 0001 code
            now = {"now": utcnow()}
            connection.execute(text("INSERT INTO tenants VALUES ('t1', 't', :now)"), now)
            connection.execute(text(_OLD_DATASET), now)
        migrate.upgrade(url, "0002")
        assert {"image_prefix", "images_prefix"} <= _columns(engine, "datasets")
        assert "ix_items_job_id_id" in _indexes(engine, "items")
        with engine.connect() as connection:  # old rows keep NULL: the dataset.json fallback
            row = connection.execute(text("SELECT image_prefix, images_prefix FROM datasets"))
            assert row.one() == (None, None)
        migrate.downgrade(url, "0001")
        assert migrate.current_revision(engine) == "0001"
        assert not {"image_prefix", "images_prefix"} & _columns(engine, "datasets")
        assert "ix_items_job_id_id" not in _indexes(engine, "items")
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT id FROM datasets")) == "ds1"
        migrate.upgrade(url)
        migrate.ensure_migrated(engine)
    finally:
        engine.dispose()


def test_0004_adds_the_preparation_columns_and_downgrade_drops_them(
    make_database_url: Callable[[], str],
) -> None:
    url = make_database_url()
    engine = create_engine(url)
    try:
        migrate.upgrade(url, "0003_params")
        assert not {"source", "prepared_at"} & _columns(engine, "jobs")
        migrate.upgrade(url, "0004")
        assert {"source", "prepared_at"} <= _columns(engine, "jobs")
        migrate.downgrade(url, "0003_params")
        assert not {"source", "prepared_at"} & _columns(engine, "jobs")
        migrate.upgrade(url)
    finally:
        engine.dispose()


_OLD_DATASET = (
    "INSERT INTO datasets (id, tenant_id, name, storage_prefix, manifest_key, n_images,"
    " n_labels, empty_rows, label_counts, created_at) VALUES ('ds1', 't1', 'old',"
    " 'tenants/t1/datasets/ds1/', 'tenants/t1/datasets/ds1/manifest.csv', 1, 1, 0, '{}', :now)"
)


def _columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def _indexes(engine: Engine, table: str) -> set[str | None]:
    return {index["name"] for index in inspect(engine).get_indexes(table)}


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_ensure_migrated_refuses_an_empty_database(make_database_url: Callable[[], str]) -> None:
    engine = create_engine(make_database_url())
    try:
        with pytest.raises(migrate.MigrationError) as info:
            migrate.ensure_migrated(engine)
        assert info.value.code == "db.not_migrated"
        assert "alembic upgrade head" in info.value.message
    finally:
        engine.dispose()
