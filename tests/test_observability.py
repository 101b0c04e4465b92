"""Request ids (API -> job row -> message headers), log formats, tracing switches, and
the Grafana dashboard against the metric names the API and the workers export.

The worker side of all this (metrics scraped during a real job, the request id in the
worker's log lines) is in tests/test_e2e_service.py, which has a real worker."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tests.api_fixtures import ApiUser
from workers.metrics import exported_names
from xmlx import logs, tracing
from xmlx.db import SessionFactory, session_scope
from xmlx.models import Job

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "xmlx.json"


def test_the_api_keeps_a_plain_request_id_and_replaces_a_bad_one(
    client: TestClient, api_user: ApiUser
) -> None:
    kept = client.get("/v1/jobs", headers={**api_user.headers, "X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    bad = client.get("/healthz", headers={"X-Request-ID": "no spaces\tor tabs" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"])
    refused = client.get("/v1/jobs", headers={"X-Request-ID": "abc-124"})
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] == "abc-124"


def test_a_submitted_job_and_its_messages_carry_the_request_id(
    client: TestClient,
    api_user: ApiUser,
    broker: redis.Redis,
    session_factory: SessionFactory,
    tmp_path: Path,
) -> None:
    from tests.api_fixtures import create_dataset, make_ready_model

    dataset = create_dataset(client, api_user, tmp_path)
    model_id = make_ready_model(client, api_user, session_factory, dataset["id"])
    broker.delete("gpu")
    body = {"model_id": model_id, "images": ["a.png", "b.png"], "dataset_id": dataset["id"]}
    headers = {**api_user.headers, "X-Request-ID": "req-for-a-job"}
    answer = client.post("/v1/predictions", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    with session_scope(session_factory) as session:
        job = session.get(Job, answer.json()["id"])
        assert job is not None and job.request_id == "req-for-a-job"
    envelopes = [json.loads(raw) for raw in broker.lrange("gpu", 0, -1)]
    assert envelopes and all(e["headers"]["x_request_id"] == "req-for-a-job" for e in envelopes)
    assert all(isinstance(e["headers"]["x_sent_at"], float) for e in envelopes)
    assert base64.b64decode(envelopes[0]["body"])  # a real Celery message


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "xmlx.worker", "levelname": "INFO", "msg": "hi"})
    record.__dict__.update(extra)
    logs.RequestIdFilter().filter(record)
    return record


def test_log_lines_carry_the_request_id_and_extra_fields_as_text_or_json() -> None:
    with logs.request_id_context("rid-1"):
        record = _record(chunk_id="chk_1")
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["request_id"] == "rid-1" and entry["chunk_id"] == "chk_1"
    assert entry["message"] == "hi" and entry["level"] == "INFO"
    line = logs.TextFormatter().format(record)
    assert line.endswith("hi [request_id=rid-1 chunk_id=chk_1]")
    assert logs.current_request_id() is None
    assert logs.TextFormatter().format(_record()).endswith("xmlx.worker: hi")


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
    ],
)
def test_tracing_is_off_unless_the_otel_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing.requested(env) is on


def _api_names(client: TestClient) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    registry = client.app.state.xmlx.metrics.registry  # type: ignore[attr-defined]
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_the_dashboard_uses_only_exported_metric_names(client: TestClient) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bxmlx_[a-z0-9_]+", expr)}
    exported = _api_names(client) | exported_names()
    assert used and used <= exported, sorted(used - exported)
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for wanted in ("queue depth", "items per second", "errors by code", "lease losses",
                   "p99", "gpu memory"):  # fmt: skip
        assert wanted in titles


_TRACED_APP = """
import sys
from fastapi.testclient import TestClient
from opentelemetry import trace
from api.app import create_app
from xmlx.settings import Settings

app = create_app(Settings())
answer = TestClient(app).get("/healthz", headers={"X-Request-ID": "traced-1"})
assert answer.status_code == 200, answer.text
trace.get_tracer_provider().force_flush()
"""


def test_with_otel_variables_the_api_traces_requests_with_their_request_id() -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.instrumentation.fastapi")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "xmlx-test",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _TRACED_APP], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    spans = [json.loads(chunk) for chunk in re.split(r"(?<=\n})\n(?={)", run.stdout.strip())]
    server = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    assert server and server[0]["attributes"][tracing.REQUEST_ID_ATTRIBUTE] == "traced-1"
    assert server[0]["resource"]["attributes"]["service.name"] == "xmlx-test"
