"""A job's results as a file: JSON Lines, CSV or Parquet, streamed a page at a time.

`pages` yields lists of `ItemOut` (each read in its own short transaction, keyset
pages of `xmlx.repository.list_items`); each writer turns one page into bytes as soon as
it arrives, so a 1,000,000-item export holds one page in memory, never the job. Parquet
gets one row group per page (pyarrow writes the footer, with every row group's offset,
at the end).

CSV and Parquet are flat: `result`, `artifacts` (name -> presigned URL) and `timings`
are JSON text columns; JSON Lines has one `ItemOut` object per line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from api.views import ItemOut

ExportFormat = Literal["jsonl", "csv", "parquet"]
MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
COLUMNS = ("key", "state", "error_code", "error_message", "finished_at",
           "result", "artifacts", "timings")  # fmt: skip
_SCHEMA = pa.schema(
    [(name, pa.timestamp("us", tz="UTC") if name == "finished_at" else pa.string())
     for name in COLUMNS]
)  # fmt: skip


def export(pages: Iterable[list[ItemOut]], fmt: ExportFormat) -> Iterator[bytes]:
    if fmt == "jsonl":
        return ("".join(item.model_dump_json() + "\n" for item in page).encode() for page in pages)
    if fmt == "csv":
        return _csv(pages)
    return _parquet(pages)


def flat_row(item: ItemOut) -> dict[str, Any]:
    """One item as the flat row of the CSV and Parquet exports."""
    return {
        "key": item.key,
        "state": item.state,
        "error_code": item.error.code if item.error else None,
        "error_message": item.error.message if item.error else None,
        "finished_at": item.finished_at,
        "result": _json(item.result),
        "artifacts": _json(item.artifacts),
        "timings": _json(item.timings),
    }


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _csv(pages: Iterable[list[ItemOut]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for page in pages:
        for item in page:
            row = flat_row(item)
            row["finished_at"] = row["finished_at"].isoformat() if row["finished_at"] else ""
            writer.writerow(row)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


class _Drain(io.RawIOBase):
    """A write-only file that hands out what was written since the last `take`, while
    telling pyarrow the true offset (the Parquet footer records row group offsets)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def _parquet(pages: Iterable[list[ItemOut]]) -> Iterator[bytes]:
    sink = _Drain()
    writer = pq.ParquetWriter(sink, _SCHEMA, compression="zstd")
    for page in pages:
        rows = [flat_row(item) for item in page]
        columns = {name: [row[name] for row in rows] for name in COLUMNS}
        writer.write_table(pa.table(columns, schema=_SCHEMA))
        yield sink.take()
    writer.close()
    yield sink.take()
