"""Prometheus metrics: request durations, and job/queue figures computed at scrape.

Job and item figures come from the database when Prometheus scrapes (one GROUP BY and
one SUM), and queue depths from Redis (LLEN of the `gpu` and `default` lists that
Celery's Redis transport uses), so every API replica reports the same truth and no
counter drifts. `xmlx_items_finished_total` sums the jobs' done/failed counters: its
`rate()` is items per second. Task durations are the workers' to export.

Each app has its own registry, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope

log = logging.getLogger("xmlx.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceCollector(Collector):
    """Jobs by kind and state, finished items, queue depths: read at each scrape."""

    def __init__(
        self, sessions: SessionFactory, queue_depths: Callable[[], dict[str, int]]
    ) -> None:
        self.sessions = sessions
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope(self.sessions) as session:
                by_state = repo.jobs_by_state(session)
                finished = repo.items_finished(session)
        except Exception:
            log.exception("metrics: database query failed")
        else:
            jobs = GaugeMetricFamily(
                "xmlx_jobs", "Jobs per kind and state", labels=["kind", "state"]
            )
            for (kind, state), count in sorted(by_state.items()):
                jobs.add_metric([kind, state], count)
            yield jobs
            items = CounterMetricFamily(
                "xmlx_items_finished", "Items finished, over all jobs", labels=["state"]
            )
            duplicates = CounterMetricFamily(
                "xmlx_duplicate_deliveries",
                "Redundant chunk deliveries and item writes that changed nothing "
                "(at-least-once delivery at work; results stay exactly once)",
            )
            duplicates.add_metric([], finished.pop("duplicates"))
            for state, count in finished.items():
                items.add_metric([state], count)
            yield items
            yield duplicates
        try:
            depths = self.queue_depths()
        except Exception as exc:
            log.warning("metrics: queue depth unavailable (%s)", exc)
            return
        queue = GaugeMetricFamily(
            "xmlx_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for name, depth in depths.items():
            queue.add_metric([name], depth)
        yield queue


class Metrics:
    def __init__(
        self, sessions: SessionFactory, queue_depths: Callable[[], dict[str, int]]
    ) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "xmlx_http_request_duration_seconds",
            "HTTP request durations by route template",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.enqueue_failures = Counter(
            "xmlx_enqueue_failures",
            "Chunk sends that failed (the reconciler sends them later)",
            registry=self.registry,
        )
        self.registry.register(ServiceCollector(sessions, queue_depths))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """ASGI middleware: observe every HTTP request's duration under its route template
    (not the raw path, which would make one series per id)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._observe(scope, status["code"], time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        metrics = self.metrics()
        if metrics is None:
            return
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        metrics.request_seconds.labels(scope["method"], template, str(status)).observe(seconds)
