"""Database plumbing: engine, sessions, the declarative base, portable column types.

The same models run on PostgreSQL (production) and SQLite (one machine, tests on a bare
machine). Two things differ between them and are handled here once:
- timestamps: SQLite has no time zones, so `UTCDateTime` stores naive UTC there and
  always hands back tz-aware UTC datetimes, on both databases;
- concurrency: SQLite gets WAL, a busy timeout and enforced foreign keys, so an API and
  a worker process can share one file.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Engine, Integer, MetaData, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from xmlx.settings import Settings

# Stable constraint names, so Alembic migrations can refer to (and drop) them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Crockford base32: ids sort by creation time and read unambiguously.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def utcnow() -> datetime:
    """Now, tz-aware UTC (the only kind of datetime the kernel stores)."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A ULID-like id, e.g. `job_01hv3k...`: 48-bit millisecond time then 80 random bits.

    Time first makes ids roughly creation-ordered, which keeps B-tree inserts local.
    """
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


class UTCDateTime(TypeDecorator[datetime]):
    """`timestamptz` on PostgreSQL, naive-UTC text on SQLite; aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


def create_engine(
    url: str, *, echo: bool = False, idle_transaction_timeout_seconds: int = 0
) -> Engine:
    """An engine for `url` with the settings this service relies on (see module doc).
    `idle_transaction_timeout_seconds` (PostgreSQL, 0: the server's): the server ends a
    session idle inside a transaction that long, releasing its locks
    (`Settings.database_idle_transaction_timeout_seconds` says why)."""
    if url.startswith("sqlite"):
        return _create_sqlite_engine(url, echo=echo)
    engine = sa_create_engine(url, echo=echo, pool_pre_ping=True)
    event.listen(engine, "handle_error", _ended_session_is_a_lost_connection)
    if idle_transaction_timeout_seconds > 0:
        timeout_ms = int(idle_transaction_timeout_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # A session setting, not a startup option: PgBouncer refuses unknown startup
            # parameters. psycopg opens a transaction for the SET: commit it.
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}")
            cursor.close()
            dbapi_connection.commit()

    return engine


IDLE_IN_TRANSACTION_TIMEOUT = "25P03"  # SQLSTATE of a session the server ended


def _ended_session_is_a_lost_connection(context: Any) -> Exception | None:
    """A session the server ended for idling in a transaction surfaces from psycopg
    as an InternalError (SQLSTATE class 25); to the service it is a lost connection,
    like any other: an OperationalError, which the workers retry and the API answers
    with 503, on an invalidated connection."""
    original = context.original_exception
    if getattr(original, "sqlstate", None) != IDLE_IN_TRANSACTION_TIMEOUT:
        return None
    context.is_disconnect = True
    return OperationalError(
        context.statement, context.parameters, original, connection_invalidated=True
    )


def _create_sqlite_engine(url: str, *, echo: bool) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = sa_create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return engine


def engine_from_settings(settings: Settings) -> Engine:
    return create_engine(
        settings.database_url,
        echo=settings.database_echo,
        idle_transaction_timeout_seconds=settings.database_idle_transaction_timeout_seconds,
    )


SessionFactory = sessionmaker[Session]


def make_session_factory(engine: Engine) -> SessionFactory:
    """Sessions whose loaded objects stay readable after commit (callers return them)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """One transaction: commit when the block ends, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
