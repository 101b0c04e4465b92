"""The API's plumbing on real parts: probes, metrics, OpenAPI, authentication, the rate
limit, problem+json errors, start-up checks, and failing open without Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api_fixtures import (
    ApiUser,
    assert_problem,
    create_dataset,
    make_ready_model,
    queued_messages,
)
from xmlx.db import SessionFactory
from xmlx.embedded_redis import free_port
from xmlx.errors import XmlxError
from xmlx.settings import Settings


def test_healthz_readyz_and_metrics(client: TestClient, api_user: ApiUser) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert set(checks) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in checks.values())
    client.get("/v1/jobs", headers=api_user.headers)
    text = client.get("/metrics").text
    assert (
        'xmlx_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"}'
        in text
    )
    assert 'xmlx_queue_depth{queue="gpu"} 0.0' in text
    assert "xmlx_items_finished_total" in text


def test_metrics_count_jobs_by_state(
    client: TestClient, api_user: ApiUser, tmp_path: Path, session_factory: SessionFactory
) -> None:
    dataset = create_dataset(client, api_user, tmp_path)
    before = client.get("/metrics").text
    make_ready_model(client, api_user, session_factory, dataset["id"])
    after = client.get("/metrics").text

    def queued_trainings(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('xmlx_jobs{kind="train",state="queued"}'):
                return float(line.split()[-1])
        return 0.0

    assert queued_trainings(after) == queued_trainings(before) + 1
    assert 'xmlx_queue_depth{queue="train"} 1.0' in after  # trainings have their own queue


def test_openapi_documents_routes_and_problems(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/v1/explanations", "/v1/jobs/{job_id}/results", "/v1/models/{model_id}"):
        assert path in doc["paths"]
    assert "Problem" in doc["components"]["schemas"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    errors = doc["paths"]["/v1/explanations"]["post"]["responses"]
    assert {"202", "401", "404", "409", "413", "422", "429"} <= set(errors)
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
        "Bearer xmlx_aaaaaaaaaaaa_" + "x" * 43,
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = client.get("/v1/jobs", headers=headers)
    assert_problem(answer, 401, "auth.invalid")
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_tampered_key_is_401(client: TestClient, api_user: ApiUser) -> None:
    tampered = api_user.key[:-1] + ("a" if api_user.key[-1] != "a" else "b")
    answer = client.get("/v1/jobs", headers={"Authorization": f"Bearer {tampered}"})
    assert_problem(answer, 401, "auth.invalid")
    assert client.get("/v1/jobs", headers=api_user.headers).status_code == 200


def test_unknown_route_and_bad_body_are_problems(client: TestClient, api_user: ApiUser) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "http.not_found")
    answer = client.post("/v1/uploads", json={"keys": "not a list"}, headers=api_user.headers)
    body = assert_problem(answer, 422, "request.invalid")
    assert body["errors"] and body["errors"][0]["loc"][:2] == ["body", "keys"]
    bad_json = client.post(
        "/v1/uploads",
        content=b"{",
        headers={**api_user.headers, "content-type": "application/json"},
    )
    assert_problem(bad_json, 422, "request.invalid")


def test_rate_limit_is_per_tenant(
    make_api_settings: Callable[..., Settings],
    make_api_user: Callable[[], ApiUser],
    broker: object,
) -> None:
    with TestClient(create_app(make_api_settings(rate_limit_per_minute=3))) as client:
        # A fixed clock in the middle of a window: the test cannot straddle two windows.
        client.app.state.xmlx.limiter.clock = lambda: 1_800_000_030.0  # type: ignore[attr-defined]
        busy, other = make_api_user(), make_api_user()
        for _ in range(3):
            assert client.get("/v1/jobs", headers=busy.headers).status_code == 200
        answer = client.get("/v1/jobs", headers=busy.headers)
        assert_problem(answer, 429, "rate.limited")
        assert answer.headers["retry-after"] == "30"
        assert client.get("/v1/jobs", headers=other.headers).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes are never limited


def test_refuses_to_start_on_an_unmigrated_database(
    make_api_settings: Callable[..., Settings], make_database_url: Callable[[], str]
) -> None:
    app = create_app(make_api_settings(database_url=make_database_url()))
    with pytest.raises(XmlxError) as raised, TestClient(app):
        pass
    assert raised.value.code == "db.not_migrated"


def test_without_redis_requests_fail_open(
    make_api_settings: Callable[..., Settings],
    make_api_user: Callable[[], ApiUser],
    tmp_path: Path,
    session_factory: SessionFactory,
    broker: object,
) -> None:
    """Redis down: the limiter lets requests through, jobs are still created (the
    reconciler will send them), readiness says which dependency is missing."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(make_api_settings(redis_url=dead))) as client:
        user = make_api_user()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert not ready.json()["checks"]["broker"]["ok"]
        assert ready.json()["checks"]["database"]["ok"]
        dataset = create_dataset(client, user, tmp_path)
        answer = client.post(
            "/v1/models", json={"dataset_id": dataset["id"], "name": "m"}, headers=user.headers
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["job"]["state"] == "queued"
        assert "xmlx_enqueue_failures_total 1.0" in client.get("/metrics").text


def test_files_route_checks_signature_and_expiry(client: TestClient, api_user: ApiUser) -> None:
    from xmlx.storage import sign_local_url

    store = client.app.state.xmlx.store  # type: ignore[attr-defined]
    key = f"tenants/{api_user.tenant_id}/uploads/a.txt"
    store.put_bytes(key, b"hello")
    good = store.presigned_get_url(key, 60)
    answer = client.get(good)
    assert answer.status_code == 200 and answer.content == b"hello"
    assert answer.headers["content-type"].startswith("text/plain")
    assert_problem(
        client.get(good.replace("signature=", "signature=0")), 403, "storage.bad_signature"
    )
    expired = sign_local_url("http://testserver", store.secret, "GET", key, 10, now=1_000_000)
    assert_problem(client.get(expired), 403, "storage.url_expired")
    put_url = store.presigned_put_url(key, 60, "text/plain")
    wrong_type = client.put(put_url, content=b"x", headers={"Content-Type": "image/png"})
    assert_problem(wrong_type, 403, "storage.bad_signature")
    assert store.get_bytes(key) == b"hello"
    assert_problem(client.put(good, content=b"x"), 403, "storage.bad_signature")  # GET URL


def test_model_creation_enqueues_one_message_after_commit(
    client: TestClient,
    api_user: ApiUser,
    tmp_path: Path,
    broker: object,
    session_factory: SessionFactory,
) -> None:
    from xmlx import repository as repo
    from xmlx.db import session_scope

    dataset = create_dataset(client, api_user, tmp_path)
    answer = client.post(
        "/v1/models",
        json={"dataset_id": dataset["id"], "name": "m", "training": {"epochs": 2, "seed": 3}},
        headers=api_user.headers,
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()["job"]
    assert (job["kind"], job["progress"]["total"], job["state"]) == ("train", 1, "queued")
    assert answer.json()["model"]["state"] == "pending"
    assert queued_messages(broker) == []  # type: ignore[arg-type]
    messages = queued_messages(broker, "train")  # type: ignore[arg-type]
    assert len(messages) == 1
    task, (chunk_id, kind) = messages[0]
    assert (task, kind) == ("xmlx.train", "train")
    with session_scope(session_factory) as session:  # committed: another session sees it
        chunks = repo.list_chunks(session, job["id"])
        stored = repo.get_job(session, api_user.tenant_id, job["id"])
    assert [c.id for c in chunks] == [chunk_id] and chunks[0].dispatched_at is not None
    assert stored is not None and stored.params["training"]["seed"] == 3
    prefix = f"tenants/{api_user.tenant_id}/uploads/dishes/images/"
    assert stored.params["dataset"]["image_prefix"] == prefix
    assert stored.params["dataset"]["manifest_key"].endswith(f"{dataset['id']}/manifest.csv")


def test_metrics_count_duplicate_writes(
    client: TestClient, api_user: ApiUser, session_factory: SessionFactory
) -> None:
    from xmlx import jobs

    def duplicates(text: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith("xmlx_duplicate_deliveries_total"))
        return float(line.split()[-1])

    before = duplicates(client.get("/metrics").text)
    job = jobs.create_job(
        session_factory, tenant_id=api_user.tenant_id, kind="predict", item_keys=["a.png"]
    ).job
    for _ in range(3):  # at-least-once delivery: the same result arrives three times
        jobs.record_item_success(session_factory, job.id, "a.png", result={"top_labels": []})
    assert duplicates(client.get("/metrics").text) == before + 2
