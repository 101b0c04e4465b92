"""Alembic migrations: they round-trip, match the models, and guard start-up."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from xmlx import migrate
from xmlx.db import Base, create_engine


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
