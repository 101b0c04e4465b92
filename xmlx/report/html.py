"""A job's gallery as one self-contained HTML file (`write_report`).

Every image is inlined as a `data:` URI and the page references nothing outside
itself, so it can be mailed or attached to an issue. Items are read a page at a time
and written as they come, so memory stays flat however large the job. The markup is
in `templates/` (package data), the cards' content in `xmlx.report.cards`.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator
from pathlib import Path

from jinja2 import Environment, PackageLoader

from xmlcore.result_metrics import mean_metrics
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.jobs import JobError
from xmlx.models import Item
from xmlx.report.cards import hierarchy_units, item_card
from xmlx.report.truth import TRUTH
from xmlx.storage import ObjectStore, StorageError

MAX_INLINE_BYTES = 8 * 1024 * 1024
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))
_TEMPLATES = Environment(loader=PackageLoader("xmlx.report", "templates"), autoescape=True)


def write_report(
    sessions: SessionFactory,
    store: ObjectStore,
    tenant_id: str,
    job_id: str,
    path: Path | str,
    *,
    max_items: int = 500,
    state: str | None = None,
) -> int:
    """Write job `job_id`'s gallery (at most `max_items` cards, optionally only items in
    `state`) to `path` as one self-contained HTML file; returns the number of cards.

    Raises `JobError` `job.not_found` when the tenant has no such job.
    """
    with session_scope(sessions) as session:
        job = repo.get_job(session, tenant_id, job_id)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        model = repo.get_model(session, tenant_id, job.model_id) if job.model_id else None
        truth = TRUTH.for_job(session, store, job)
    hierarchy = hierarchy_units(model.hierarchy if model is not None else None)
    prefix = str(job.params.get("image_prefix", ""))
    card_template = _TEMPLATES.get_template("report_card.html")
    written = 0
    with Path(path).open("w", encoding="utf-8") as out:
        out.write(
            _TEMPLATES.get_template("report_page.html").render(
                job=job,
                metrics=mean_metrics(job.result_metrics),
                state=state,
                truth_known=truth is not None,
                shown=f"first {min(max_items, job.total)} of {job.total} items",
            )
        )
        link = functools.partial(_data_uri, store)
        for item in _items(sessions, tenant_id, job_id, state, max_items):
            out.write(card_template.render(card=item_card(item, prefix, link, hierarchy, truth)))
            written += 1
        out.write("</div></body></html>\n")
    return written


def _items(
    sessions: SessionFactory, tenant_id: str, job_id: str, state: str | None, max_items: int
) -> Iterator[Item]:
    cursor: str | None = None
    left = max_items
    while left > 0:
        with session_scope(sessions) as session:
            page = repo.list_items(
                session, tenant_id, job_id, state=state, limit=min(left, 200), cursor=cursor
            )
        if page is None:
            return
        yield from page.rows
        left -= len(page.rows)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _data_uri(store: ObjectStore, key: str) -> str | None:
    """The object inlined as a `data:` URI; None when missing, too large or not an image."""
    try:
        data = store.get_bytes(key, max_bytes=MAX_INLINE_BYTES)
    except StorageError:
        return None
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
