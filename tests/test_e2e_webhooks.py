"""Webhooks through the real API and a real worker (issue 16, "Must show"): a loopback
receiver gets one signed call per final state, also when the worker is SIGKILLed
mid-POST or the API restarts mid-delivery; a receiver that is down gets retries and,
once back, the call; a private-range URL is refused at submit.

Kept small (the backoff, signature and claim rules are tests/test_webhooks.py): the
final states are cancels of queued jobs (the worker serves only the `default` queue, so
no chunk runs and no TensorFlow loads), the beat ticks every 0.5 s, retries wait ~1 s
and a killed worker's claim expires after 5 s.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.service_fixtures import running_stack
from tests.webhook_receiver import Receiver, running_receiver
from xmlx import repository as repo
from xmlx.client import Client
from xmlx.db import create_engine, make_session_factory, session_scope
from xmlx.embedded_redis import free_port
from xmlx.models import ModelState
from xmlx.settings import DEV_API_KEY_PEPPER
from xmlx.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LEASE = 5
ENV = {
    "XMLX_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "XMLX_WEBHOOK_INTERVAL_SECONDS": "0.5",
    "XMLX_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "XMLX_WEBHOOK_RETRY_MAX_SECONDS": "1",
    "XMLX_WEBHOOK_LEASE_SECONDS": str(LEASE),
    "XMLX_WEBHOOK_READ_TIMEOUT_SECONDS": "30",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("webhooks-e2e")
    for running in running_stack(root, workers=0, extra_env=ENV):
        running.start_worker("worker1", queues="default")
        yield running


@dataclass(frozen=True)
class Tenant:
    """A tenant's API key on the stack, and its ready model."""

    base_url: str
    key: str
    model_id: str

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Tenant:
    """A tenant with a ready model (rows written as training would leave them)."""
    engine = create_engine(stack.env["XMLX_DATABASE_URL"])
    pepper = stack.env.get("XMLX_API_KEY_PEPPER", DEV_API_KEY_PEPPER)
    with session_scope(make_session_factory(engine)) as session:
        tenant = repo.create_tenant(session, "hooks")
        _row, key = repo.create_api_key(session, tenant.id, pepper, "e2e")
        dataset = repo.create_dataset(session, tenant.id, name="d", n_images=3, n_labels=4)
        model = repo.create_model(session, tenant.id, dataset.id, params={"layer_sizes": [2]})
        model.state, model.artifact_key = ModelState.READY, "absent/model.zip"
    engine.dispose()
    return Tenant(stack.api_url, key, model.id)


def _cancelled_job(api: Tenant, callback_url: str) -> str:
    body = {"model_id": api.model_id, "images": ["a.png"], "callback_url": callback_url}
    job = api("POST", "/v1/predictions", json=body)
    assert job.status_code == 202, job.text
    job_id = str(job.json()["id"])
    assert api("POST", f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    return job_id


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _delivery(api: Tenant, job_id: str) -> dict[str, Any]:
    (row,) = api("GET", f"/v1/jobs/{job_id}/webhooks").json()["items"]
    return dict(row)


def _calls_for(receiver: Receiver, job_id: str) -> list[Any]:
    with receiver.lock:
        return [c for c in receiver.calls if json.loads(c.body)["job"]["id"] == job_id]


def _secret(api: Tenant) -> str:
    return str(api("GET", "/v1/webhook-settings").json()["secret"])


def _assert_one_signed_call(
    receiver: Receiver, job_id: str, secret: str, row: dict[str, Any]
) -> None:
    calls = _calls_for(receiver, job_id)
    assert calls and all(call.signed_by(secret) for call in calls)
    assert {call.delivery_id for call in calls} == {row["id"]}  # one delivery, deduped by id
    assert {json.loads(call.body)["event"] for call in calls} == {"job.cancelled"}
    assert row["state"] == "delivered" and row["last_status"] == 200


def test_a_private_url_is_refused_at_submit(api: Tenant) -> None:
    body = {"model_id": api.model_id, "images": ["a.png"], "callback_url": "http://10.2.3.4/h"}
    answer = api("POST", "/v1/predictions", json=body)
    assert answer.status_code == 422 and answer.json()["code"] == "webhook.url_not_allowed"


def test_worker_killed_mid_delivery(stack: Stack, api: Tenant) -> None:
    with running_receiver() as receiver:
        hold = receiver.hang = threading.Event()
        job_id = _cancelled_job(api, receiver.url)
        _wait(lambda: _calls_for(receiver, job_id), 15, "the first POST")
        worker = stack.processes.pop("worker1")
        os.killpg(worker.pid, signal.SIGKILL)  # the parent and its pool child, mid-POST
        worker.wait(timeout=10)
        receiver.hang = None
        hold.set()
        stack.start_worker("worker1", queues="default")
        row = _wait(
            lambda: (r := _delivery(api, job_id))["state"] == "delivered" and r, LEASE + 25,
            "the delivery after the restart",
        )  # fmt: skip
        _assert_one_signed_call(receiver, job_id, _secret(api), row)
        assert len(_calls_for(receiver, job_id)) == 2  # the killed attempt, then the retry


def test_a_receiver_down_gets_retries_then_the_call(api: Tenant) -> None:
    """Through the Python client: an explanation batch with its callback_url."""
    port = free_port()
    with Client(api.base_url, api.key) as client:
        job = client.explain(api.model_id, ["a.png"], callback_url=f"http://127.0.0.1:{port}/h")
        assert client.cancel(job.id).state == "cancelled"

        def delivery() -> dict[str, Any]:
            (row,) = client.webhooks(job.id)
            return row

        row = _wait(lambda: (r := delivery())["attempts"] >= 2 and r, 20, "retries")
        assert row["state"] == "pending" and row["last_error"] == "webhook.connect_failed"
        with running_receiver(port) as receiver:
            row = _wait(lambda: (r := delivery())["state"] == "delivered" and r, 20, "delivery")
            _assert_one_signed_call(receiver, job.id, _secret(api), row)
            assert len(_calls_for(receiver, job.id)) == 1


def test_api_restarted_mid_delivery(stack: Stack, api: Tenant) -> None:
    with running_receiver() as receiver:
        receiver.status = 503  # the first attempts fail while the API is away
        job_id = _cancelled_job(api, receiver.url)
        stack.stop_process("api")
        _wait(lambda: _calls_for(receiver, job_id), 20, "an attempt without the API")
        receiver.status = 200
        stack.start_api(int(stack.api_url.rsplit(":", 1)[1]))
        row = _wait(
            lambda: (r := _delivery(api, job_id))["state"] == "delivered" and r, 20, "delivery"
        )
        calls = _calls_for(receiver, job_id)
        assert row["attempts"] == len(calls) >= 2 and row["last_status"] == 200
        _assert_one_signed_call(receiver, job_id, _secret(api), row)
        time.sleep(1.0)  # later ticks (every 0.5 s) send nothing more
        assert len(_calls_for(receiver, job_id)) == len(calls)
