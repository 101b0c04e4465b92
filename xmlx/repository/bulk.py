"""Bulk inserts of a job's chunks and items: COPY on PostgreSQL, executemany elsewhere.

A million-item batch is inserted a slice at a time (`xmlx.jobs.prepare`), each slice
in the caller's transaction. On PostgreSQL the rows go through psycopg's `COPY ... FROM
STDIN` on the session's own connection (same transaction, no ORM objects): about 5x
fewer microseconds per row than a multi-row INSERT. SQLite takes one executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xmlx.db import Base, new_id
from xmlx.models import ChunkState, ItemState

_CHUNK_COLUMNS = ("id", "job_id", "seq", "item_start", "item_stop", "state", "attempts")
_ITEM_COLUMNS = ("job_id", "seq", "item_key", "chunk_id", "state")


def insert_work(
    session: Session,
    job_id: str,
    item_keys: Sequence[str],
    chunk_size: int,
    *,
    first_seq: int = 0,
    first_chunk_seq: int = 0,
) -> list[str]:
    """Insert `item_keys` as items `first_seq`, ... in chunks of `chunk_size` numbered
    from `first_chunk_seq`; return the new chunk ids in order."""
    chunks: list[tuple[Any, ...]] = []
    items: list[tuple[Any, ...]] = []
    pending, queued = ItemState.PENDING.value, ChunkState.QUEUED.value
    for n, start in enumerate(range(0, len(item_keys), chunk_size)):
        stop = min(start + chunk_size, len(item_keys))
        chunk_id = new_id("chk")
        chunks.append((chunk_id, job_id, first_chunk_seq + n, first_seq + start,
                       first_seq + stop, queued, 0))  # fmt: skip
        items.extend(
            (job_id, first_seq + i, item_keys[i], chunk_id, pending) for i in range(start, stop)
        )
    _insert_rows(session, "chunks", _CHUNK_COLUMNS, chunks)
    _insert_rows(session, "items", _ITEM_COLUMNS, items)
    return [row[0] for row in chunks]


def _insert_rows(
    session: Session, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        try:
            with connection.connection.cursor().copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.IntegrityError as exc:  # as SQLAlchemy reports it elsewhere
            raise IntegrityError(statement, None, exc) from exc
        return
    session.execute(
        insert(Base.metadata.tables[table]), [dict(zip(columns, row, strict=True)) for row in rows]
    )
