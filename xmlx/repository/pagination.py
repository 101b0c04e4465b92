"""Keyset pagination with opaque cursors.

A cursor is the sort key of the last row of a page, JSON in URL-safe base64: clients
pass it back unchanged and never depend on what is inside. Keyset (not OFFSET) keeps a
page of a 100,000-item job as cheap as the first page.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from xmlx.errors import XmlxError

T = TypeVar("T")

MAX_PAGE_SIZE = 1000


class InvalidCursorError(XmlxError):
    def __init__(self, message: str = "the cursor is not one this service gave out") -> None:
        super().__init__("cursor.invalid", message)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows; `next_cursor` is None on the last page."""

    rows: list[T]
    next_cursor: str | None


def encode_cursor(*values: Any) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n_values: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursorError() from exc
    if not isinstance(values, list) or len(values) != n_values:
        raise InvalidCursorError()
    return values


def decode_time_id_cursor(cursor: str) -> tuple[datetime, str]:
    created, row_id = decode_cursor(cursor, 2)
    try:
        created_at = datetime.fromisoformat(created)
    except (TypeError, ValueError) as exc:
        raise InvalidCursorError() from exc
    if created_at.tzinfo is None or not isinstance(row_id, str):
        raise InvalidCursorError()
    return created_at, row_id


def decode_int_cursor(cursor: str) -> int:
    (value,) = decode_cursor(cursor, 1)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCursorError()
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise XmlxError("page.invalid_limit", f"limit must be between 1 and {MAX_PAGE_SIZE}")
    return limit


def newest_first_page(
    session: Session, stmt: Select[Any], entity: Any, limit: int, cursor: str | None
) -> Page[Any]:
    """One page of `stmt` ordered by (created_at, id) descending, `entity`'s columns."""
    check_limit(limit)
    if cursor is not None:
        created_at, row_id = decode_time_id_cursor(cursor)
        stmt = stmt.where(
            or_(
                entity.created_at < created_at,
                and_(entity.created_at == created_at, entity.id < row_id),
            )
        )
    ordered = stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    rows = list(session.scalars(ordered))
    if len(rows) <= limit:
        return Page(rows=rows, next_cursor=None)
    rows = rows[:limit]
    return Page(rows=rows, next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id))
