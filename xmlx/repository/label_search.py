"""Items by predicted label, for the gallery's label filter.

Items whose top labels contain a label, in submission order, a keyset page at a time,
each request scanning a bounded window of the job. The result column holds the JSON
text the kernel wrote (`json.dumps` defaults, on SQLite and PostgreSQL's `json` type
alike), so a LIKE on the exact `"label": "<name>"` fragment finds the candidates in
the database, and each candidate is then checked on its parsed JSON, so a look-alike
fragment elsewhere can never slip through. Measured with bench/web_latency.py.
"""

from __future__ import annotations

import json

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from xmlx.models import Item, ItemState
from xmlx.repository.jobs import get_job
from xmlx.repository.pagination import Page, check_limit, decode_int_cursor, encode_cursor

# Items looked at per request when filtering by label: bounds the cost of a rare or
# absent label on a huge job (measured with bench/web_latency.py).
SCAN_WINDOW = 2000


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
    window: int = SCAN_WINDOW,
) -> Page[Item] | None:
    """Succeeded items predicted `label`, looking at no more than `window` items per call.

    A page may hold fewer than `limit` matches (none, for a rare label) and still have a
    next cursor: the scan goes on from there. None when the tenant has no such job.
    """
    check_limit(limit)
    if get_job(session, tenant_id, job_id) is None:
        return None
    after = decode_int_cursor(cursor) if cursor is not None else None
    scope = select(Item.id).where(Item.job_id == job_id, Item.state == ItemState.SUCCEEDED)
    if after is not None:
        scope = scope.where(Item.id > after)
    # The last id of this call's window, found on the (job_id, state, id) index alone.
    bound = session.scalar(scope.order_by(Item.id).offset(window - 1).limit(1))
    stmt = select(Item).where(
        Item.id.in_(scope.where(Item.id <= bound) if bound is not None else scope),
        cast(Item.result, Text).like(_like_fragment(label), escape="\\"),
    )
    candidates = list(session.scalars(stmt.order_by(Item.id).limit(limit + 1)))
    shown = candidates[:limit]
    rows = [item for item in shown if has_label(item, label)]
    if len(candidates) > limit:
        return Page(rows=rows, next_cursor=encode_cursor(shown[-1].id))
    return Page(rows=rows, next_cursor=encode_cursor(bound) if bound is not None else None)
