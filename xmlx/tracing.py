"""OpenTelemetry tracing hooks: off unless the standard `OTEL_*` variables ask for it.

On when `OTEL_SDK_DISABLED` is not `true` AND an exporter is named: an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
`OTEL_TRACES_EXPORTER` (`otlp` or `console`; `none` keeps it off). The SDK then reads
the rest of the standard variables itself (service name, headers, sampler). It also
needs the optional packages (`pip install xmlx[otel]`); asked for without them, it
logs a warning and stays off: tracing must never stop the service.

What is traced: every FastAPI request (`api.app`) and every Celery task publish and
run (`workers.observe`, in each pool child after the fork), each span carrying the
request id as `xmlx.request_id`, so a trace and the log lines of one API call find
each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from xmlx.logs import current_request_id

log = logging.getLogger("xmlx")
REQUEST_ID_ATTRIBUTE = "xmlx.request_id"
_configured: list[bool] = []


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the `OTEL_*` variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(exporter or endpoint)


def setup(service_name: str, env: Mapping[str, str] = os.environ) -> bool:
    """A tracer provider for this process when requested and installed; True if on."""
    if _configured:
        return _configured[0]
    enabled = requested(env) and _install_provider(service_name, env)
    _configured.append(enabled)
    return enabled


def _install_provider(service_name: str, env: Mapping[str, str]) -> bool:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* variables ask for tracing, but opentelemetry-sdk is not installed")
        return False

    class RequestIdSpanProcessor(SpanProcessor):
        """Tags every span started under a request id with it."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            _tag_request_id(span)

    exporter = _exporter(env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp")
    if exporter is None:
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(RequestIdSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"service": service_name})
    return True


def _exporter(name: str) -> Any:
    try:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    except ImportError:
        log.warning("tracing asked for exporter %r, whose package is not installed", name)
        return None


def _tag_request_id(span: Any) -> None:
    request_id = current_request_id()
    if request_id is not None:
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def tag_current_span(request_id: str) -> None:
    """Put the request id on the span already open (the FastAPI server span, which
    starts before the request id is known)."""
    if _configured and _configured[0]:
        from opentelemetry import trace

        trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def instrument_fastapi(app: Any) -> bool:
    """Spans for every request of `app`, when tracing is on."""
    if not setup("xmlx-api"):
        return False
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        log.warning("tracing is on but opentelemetry-instrumentation-fastapi is not installed")
        return False
    FastAPIInstrumentor.instrument_app(app)
    return True


def setup_worker_tracing() -> bool:
    """Spans for every Celery task this process sends or runs, when tracing is on."""
    if not setup("xmlx-worker"):
        return False
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        log.warning("tracing is on but opentelemetry-instrumentation-celery is not installed")
        return False
    CeleryInstrumentor().instrument()
    return True
