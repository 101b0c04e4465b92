"""The one item query the gallery needs that `xmlx.repository` lacks: items by label.

Items whose top labels contain a label, in submission order, a keyset page at a time.
The database does the scan: the result column holds the JSON text the kernel wrote
(`json.dumps` defaults on both SQLite and PostgreSQL's `json` type), so a LIKE on the
exact `"label": "<name>"` fragment finds the candidates, and each candidate is then
checked on its parsed JSON, so a look-alike fragment elsewhere can never slip through.
Measured with bench/web_latency.py: see the module doc there.
"""

from __future__ import annotations

import json

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from xmlx import repository as repo
from xmlx.models import Item, ItemState
from xmlx.repository import Page
from xmlx.repository.pagination import check_limit, decode_int_cursor, encode_cursor


def _like_fragment(label: str) -> str:
    fragment = '"label": ' + json.dumps(label)
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def has_label(item: Item, label: str) -> bool:
    entries = (item.result or {}).get("top_labels") or []
    return any(entry.get("label") == label for entry in entries)


def items_with_label(
    session: Session,
    tenant_id: str,
    job_id: str,
    label: str,
    *,
    limit: int = 24,
    cursor: str | None = None,
) -> Page[Item] | None:
    """Succeeded items predicted `label`; None when the tenant has no such job."""
    check_limit(limit)
    if repo.get_job(session, tenant_id, job_id) is None:
        return None
    stmt = select(Item).where(
        Item.job_id == job_id,
        Item.state == ItemState.SUCCEEDED,
        cast(Item.result, Text).like(_like_fragment(label), escape="\\"),
    )
    if cursor is not None:
        stmt = stmt.where(Item.id > decode_int_cursor(cursor))
    candidates = list(session.scalars(stmt.order_by(Item.id).limit(limit + 1)))
    window = candidates[:limit]
    rows = [item for item in window if has_label(item, label)]
    more = len(candidates) > limit
    return Page(rows=rows, next_cursor=encode_cursor(window[-1].id) if more else None)
