"""Celery signal handlers that make a worker observable: log format and request ids,
the metrics exporter, queue wait, and tracing.

Connected when `workers.tasks` is imported, which Celery does in the parent and in
every pool child.

- Logging (`after_setup_logger`, `after_setup_task_logger`): Celery's handlers get
  `xmlx.logs`' formatter (`XMLX_LOG_FORMAT`: text or json) and the request id.
- A task runs under the request id of the message that sent it (`task_prerun`);
  `workers.wakeup` then switches to each chunk's job's id while it runs the chunk.
- The queue wait of each message (send time in its headers, `xmlx.messaging`).
- The parent starts the metrics exporter when `XMLX_WORKER_METRICS_PORT` is set
  (`worker_init`); a child's live gauges are dropped when it exits.
- OpenTelemetry, when the standard `OTEL_*` variables ask for it (`xmlx.tracing`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from workers.metrics import QUEUE_WAIT
from xmlx import logs, metrics_export, tracing
from xmlx.messaging import HEADER_REQUEST_ID, HEADER_SENT_AT
from xmlx.settings import get_settings

log = logging.getLogger("xmlx.worker")


def _install_format(logger: logging.Logger, format: str = logs.TEXT_FORMAT, **_: Any) -> None:
    json_lines = get_settings().log_format == "json"
    for handler in logger.handlers:
        handler.setFormatter(logs.JsonFormatter() if json_lines else logs.TextFormatter(format))
        _add_request_id(handler)


def _install_task_format(logger: logging.Logger, **_: Any) -> None:
    # In text mode Celery's TaskFormatter stays: it fills the task name and id its
    # format names.
    json_lines = get_settings().log_format == "json"
    for handler in logger.handlers:
        if json_lines:
            handler.setFormatter(logs.JsonFormatter())
        _add_request_id(handler)


def _add_request_id(handler: logging.Handler) -> None:
    if not any(isinstance(f, logs.RequestIdFilter) for f in handler.filters):
        handler.addFilter(logs.RequestIdFilter())


after_setup_logger.connect(_install_format, weak=False)
after_setup_task_logger.connect(_install_task_format, weak=False)


@task_prerun.connect(weak=False)
def _task_started(task: Task, **_: Any) -> None:
    request = task.request
    request_id = _header(request, HEADER_REQUEST_ID)
    logs.set_request_id(request_id)
    if request_id is not None:  # the Celery span may have started before this handler
        tracing.tag_current_span(request_id)
    sent_at = _header(request, HEADER_SENT_AT)
    if isinstance(sent_at, int | float):
        queue = (request.delivery_info or {}).get("routing_key") or "unknown"
        QUEUE_WAIT.labels(queue).observe(max(0.0, time.time() - sent_at))


def _header(request: Any, name: str) -> Any:
    # Protocol 2 puts custom headers on the request itself; older messages under
    # `headers`.
    found = getattr(request, name, None)
    return found if found is not None else (getattr(request, "headers", None) or {}).get(name)


@task_postrun.connect(weak=False)
def _task_ended(**_: Any) -> None:
    logs.set_request_id(None)


@worker_init.connect(weak=False)
def _start_exporter(**_: Any) -> None:
    port = get_settings().worker_metrics_port
    if port is not None:
        # Before the pool forks: a restarted worker's counters start from zero, not
        # from the sum with its previous life's files.
        metrics_export.prepare_directory(os.environ)
        metrics_export.start_exporter(port)
        log.info("worker metrics on port %s", port)


@worker_process_init.connect(weak=False)
def _child_started(**_: Any) -> None:
    tracing.setup_worker_tracing()


@worker_process_shutdown.connect(weak=False)
def _child_exiting(pid: int | None = None, **_: Any) -> None:
    metrics_export.mark_process_dead(pid or os.getpid())
