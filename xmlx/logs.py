"""Log lines that say which request they belong to, as text or as JSON.

The request id: the API takes a client's `X-Request-ID` (or makes one), keeps it in a
context variable for the request, sends it in the headers of the Celery messages the
request causes (`xmlx.messaging`), and records it on the jobs it creates
(`jobs.request_id`). A worker sets it again from the message header while a task runs
and from the job row while it runs one of that job's chunks (a wake-up message may
run another job's chunk: the row, not the message, says whose work it is). Every log
record carries it as `request_id`.

Formats (`XMLX_LOG_FORMAT`): `text` (the default, for people at a terminal: the usual
line, then the request id and any `extra=` fields as `key=value`) or `json` (one
object per line with time, level, logger, message, request_id and the `extra=`
fields; for log shippers -- the deploy manifests set it).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
# What a client may send as its id: short, and safe in a log line and a header.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_request_id: ContextVar[str | None] = ContextVar("xmlx_request_id", default=None)

# Attributes every LogRecord has: whatever else is on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


def current_request_id() -> str | None:
    return _request_id.get()


def accept_request_id(sent: str | None) -> str:
    """The client's id when it is acceptable, else a fresh one."""
    if sent is not None and _REQUEST_ID_PATTERN.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


@contextmanager
def request_id_context(request_id: str | None) -> Iterator[None]:
    """Log (and tag jobs) under `request_id` inside the block; None leaves it as it was."""
    if request_id is None:
        yield
        return
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def set_request_id(request_id: str | None) -> None:
    """For Celery's prerun/postrun signals, which cannot wrap the task in a block."""
    _request_id.set(request_id)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (None outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    items = record.__dict__.items()
    return {k: v for k, v in items if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "process": record.process,
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _extras(record)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        shown = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{first} [{shown}]{newline}{rest}"


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def install(handler: logging.Handler, log_format: str) -> None:
    """Give `handler` the chosen format and the request id on each record."""
    handler.setFormatter(make_formatter(log_format))
    if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
        handler.addFilter(RequestIdFilter())


def configure_root(log_format: str, level: int = logging.INFO) -> None:
    """The API process's logging: one stderr handler on the root logger."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.setLevel(level)
    for handler in root.handlers:
        install(handler, log_format)
