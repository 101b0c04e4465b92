"""Database plumbing: ids, UTC timestamps on both databases, naming, transactions."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from tests.kernel_fixtures import TEST_DATABASE_URL_ENV
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import Base, SessionFactory, create_engine, new_id, session_scope
from xmlx.models import Tenant


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id("job") for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    earlier = new_id("job")
    time.sleep(0.002)
    assert new_id("job") > earlier


def test_timestamps_come_back_aware_utc(session_factory: SessionFactory) -> None:
    paris = timezone(timedelta(hours=2))
    moment = datetime(2024, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    with session_scope(session_factory) as session:
        tenant = repo.create_tenant(session, f"tz-{new_id('x')}")
        tenant.created_at = moment
    with session_scope(session_factory) as session:
        stored = session.scalars(select(Tenant).where(Tenant.id == tenant.id)).one()
        session.refresh(stored)
        assert stored.created_at.tzinfo is not None
        assert stored.created_at.utcoffset() == timedelta(0)
        assert stored.created_at == moment.astimezone(UTC)


def test_naive_datetimes_are_refused(session_factory: SessionFactory) -> None:
    with (
        pytest.raises(StatementError, match="naive datetime"),
        session_scope(session_factory) as session,
    ):
        tenant = repo.create_tenant(session, f"naive-{new_id('x')}")
        tenant.created_at = datetime(2024, 1, 1)
        session.flush()


def test_session_scope_rolls_back_on_error(session_factory: SessionFactory) -> None:
    name = f"rollback-{new_id('x')}"
    with pytest.raises(RuntimeError), session_scope(session_factory) as session:
        repo.create_tenant(session, name)
        raise RuntimeError("boom")
    with session_scope(session_factory) as session:
        assert repo.get_tenant_by_name(session, name) is None


def test_constraints_have_stable_names(database_engine: object) -> None:
    inspector = inspect(database_engine)
    assert inspector.get_pk_constraint("jobs")["name"] in ("pk_jobs", None)  # SQLite: unnamed
    uniques = {u["name"] for u in inspector.get_unique_constraints("items")}
    assert "uq_items_job_id_item_key" in uniques
    indexes = {i["name"] for i in inspector.get_indexes("items")}
    assert {"ix_items_job_id_state_id", "ix_items_chunk_id"} <= indexes
    assert set(Base.metadata.tables) == {
        "tenants", "api_keys", "datasets", "models", "jobs", "chunks", "items",
        "purges", "tenant_usage", "webhook_settings", "webhook_deliveries",
    }  # fmt: skip


def test_foreign_keys_are_enforced(session_factory: SessionFactory) -> None:
    with pytest.raises(IntegrityError):
        jobs.create_job(session_factory, tenant_id="ten_missing", kind="predict", item_keys=["a"])


def test_database_kind_matches_the_environment(database_engine: Engine) -> None:
    """The live connection is the server CI names in XMLX_TEST_DATABASE_URL (a test
    database on that host and port), or a SQLite file when the variable is unset."""
    server_url = os.environ.get(TEST_DATABASE_URL_ENV)
    with database_engine.connect() as connection:
        dialect = connection.dialect.name
        if server_url:
            wanted = make_url(server_url)
            assert dialect == wanted.get_backend_name() == "postgresql"
            version = connection.execute(text("SELECT version()")).scalar_one()
            port = connection.execute(text("SELECT inet_server_port()")).scalar_one()
            database = connection.execute(text("SELECT current_database()")).scalar_one()
            assert str(version).startswith("PostgreSQL")
            assert port == (wanted.port or 5432)
            assert str(database).startswith("xmlx_test_")  # kernel_fixtures' own database
        else:
            assert dialect == "sqlite"
            files = connection.execute(text("PRAGMA database_list")).all()
            assert files[0][2].endswith(".sqlite")  # a file, not an in-memory database


@pytest.mark.skipif(not os.environ.get(TEST_DATABASE_URL_ENV), reason="PostgreSQL only")
def test_a_session_frozen_inside_a_transaction_loses_its_locks(
    database_url: str, tenant_id: str
) -> None:
    """A worker stopped mid-transaction (SIGSTOP, a paused VM) held a job's row lock and
    every other worker of the job waited on it for as long as it stayed stopped (seen
    in chaos scenario 14). With the timeout the server ends the frozen session and the
    waiter gets the row."""
    frozen_engine = create_engine(database_url, idle_transaction_timeout_seconds=1)
    waiter_engine = create_engine(database_url)
    lock = text("SELECT id FROM tenants WHERE id = :id FOR UPDATE")
    try:
        frozen = frozen_engine.connect()
        frozen.begin()
        frozen.execute(lock, {"id": tenant_id})  # then nothing: "idle in transaction"
        with waiter_engine.connect() as waiter:
            waiter.execute(text("SET lock_timeout = '10s'"))
            started = time.monotonic()
            assert waiter.execute(lock, {"id": tenant_id}).scalar() == tenant_id
            waited = time.monotonic() - started
            waiter.rollback()
        assert 0.5 < waited < 5  # about the 1 s timeout, not the 10 s lock_timeout
        with pytest.raises(OperationalError):  # the frozen session was ended
            frozen.execute(text("SELECT 1"))
        frozen.invalidate()
    finally:
        frozen_engine.dispose()
        waiter_engine.dispose()
