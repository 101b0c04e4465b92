"""The workers' metrics exporter: one HTTP endpoint summing every worker process.

prometheus_client's multiprocess mode (see `workers.metrics`): each process writes
its metric values to files in `PROMETHEUS_MULTIPROC_DIR`; the exporter reads them all
at each scrape. The directory must be set before any worker process imports
prometheus_client, and emptied when the worker (re)starts, or a restarted worker's
counters would add to the dead one's; `prepare_directory` does both for the CLI.

Who exports: `xmlx worker --metrics-port N` runs Celery with
`XMLX_WORKER_METRICS_PORT=N`, and the Celery parent starts the exporter when it
boots (`workers.observe`); `xmlx worker --gpus ... --metrics-port N` starts it in the
supervisor instead, so the N GPU workers and their children share one port.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import MutableMapping
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "XMLX_WORKER_METRICS_PORT"


def prepare_directory(env: MutableMapping[str, str]) -> Path:
    """An empty multiprocess directory named in `env` (a fresh temporary one unless
    `PROMETHEUS_MULTIPROC_DIR` already names one, which is then emptied)."""
    named = env.get(MULTIPROC_ENV)
    directory = Path(named) if named else Path(tempfile.mkdtemp(prefix="xmlx-metrics-"))
    if directory.exists():
        for entry in directory.glob("*.db"):
            entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    env[MULTIPROC_ENV] = str(directory)
    return directory


def start_exporter(port: int, address: str = "0.0.0.0") -> threading.Thread:
    """Serve the sum of every process's metrics on `port` from a daemon thread."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    if not os.environ.get(MULTIPROC_ENV):
        raise RuntimeError(f"{MULTIPROC_ENV} must be set before the worker metrics export")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    _server, thread = start_http_server(port, addr=address, registry=registry)
    return thread


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (GPU memory) from the export."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
