"""Jobs through the API: status, results (pages and JSON Lines), artifacts, cancel, models,
and tenant isolation. Items are finished with the kernel's own calls, as a worker does."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_fixtures import ApiUser, assert_problem, make_ready_model
from tests.test_api_batches import small_dataset
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope
from xmlx.keys import item_artifact_key


@pytest.fixture
def model_id(client: TestClient, api_user: ApiUser, session_factory: SessionFactory) -> str:
    return make_ready_model(
        client, api_user, session_factory, small_dataset(client, api_user)["id"]
    )


def submit(
    client: TestClient, user: ApiUser, model_id: str, n: int, kind: str = "predictions"
) -> Any:
    body = {"model_id": model_id, "images": [f"img/{i:05d}.png" for i in range(n)]}
    answer = client.post(f"/v1/{kind}", json=body, headers=user.headers)
    assert answer.status_code == 202, answer.text
    return answer.json()


def finish(
    client: TestClient, sessions: SessionFactory, user: ApiUser, job: Any, fail_every: int = 0
) -> None:
    """Record every item of `job`: artifacts written, results stored (every
    `fail_every`-th item fails with a code instead)."""
    store = client.app.state.xmlx.store  # type: ignore[attr-defined]
    for i in range(job["progress"]["total"]):
        key = f"img/{i:05d}.png"
        if fail_every and i % fail_every == fail_every - 1:
            code = "image.corrupt" if i % 2 else "image.missing"
            jobs.record_item_failure(sessions, job["id"], key, code=code, message=f"{key} is bad")
            continue
        artifact = item_artifact_key(user.tenant_id, job["id"], key, "heatmap.png")
        store.put_bytes(artifact, f"png of {key}".encode(), "image/png")
        jobs.record_item_success(
            sessions, job["id"], key,
            result={"top_k": [["salt", 0.9]], "latent": [0.1, 0.2]},
            artifacts={"heatmap.png": artifact},
        )  # fmt: skip


def test_job_status_progress_and_error_summary(
    client: TestClient, api_user: ApiUser, model_id: str, session_factory: SessionFactory
) -> None:
    job = submit(client, api_user, model_id, 9)
    finish(client, session_factory, api_user, job, fail_every=3)
    status = client.get(f"/v1/jobs/{job['id']}", headers=api_user.headers).json()
    assert status["state"] == "partially_succeeded"
    assert status["progress"] == {"total": 9, "done": 6, "failed": 3, "pending": 0}
    assert status["errors_by_code"] == {"image.missing": 2, "image.corrupt": 1}
    assert status["finished_at"] is not None and status["elapsed_seconds"] >= 0
    assert status["links"]["results"] == f"/v1/jobs/{job['id']}/results"


def test_results_pages_filters_and_artifacts(
    client: TestClient, api_user: ApiUser, model_id: str, session_factory: SessionFactory
) -> None:
    job = submit(client, api_user, model_id, 8)
    finish(client, session_factory, api_user, job, fail_every=4)
    url = f"/v1/jobs/{job['id']}/results"
    keys, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, params=params, headers=api_user.headers).json()
        keys += [item["key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert keys == [f"img/{i:05d}.png" for i in range(8)]
    failed = client.get(url, params={"state": "failed"}, headers=api_user.headers).json()["items"]
    assert [(i["key"], i["error"]["code"]) for i in failed] == [
        ("img/00003.png", "image.corrupt"),
        ("img/00007.png", "image.corrupt"),
    ]
    first = client.get(url, params={"limit": 1}, headers=api_user.headers).json()["items"][0]
    assert first["result"] == {"top_k": [["salt", 0.9]], "latent": [0.1, 0.2]}
    download = client.get(first["artifacts"]["heatmap.png"])
    assert download.status_code == 200 and download.content == b"png of img/00000.png"
    assert download.headers["content-type"] == "image/png"
    assert_problem(
        client.get(url, params={"cursor": "bogus"}, headers=api_user.headers), 422, "cursor.invalid"
    )
    assert_problem(
        client.get(url, params={"limit": 0}, headers=api_user.headers), 422, "request.invalid"
    )


def test_results_jsonl_streams_every_item(
    client: TestClient, api_user: ApiUser, model_id: str, session_factory: SessionFactory
) -> None:
    job = submit(client, api_user, model_id, 2345, kind="explanations")
    jobs.record_item_failure(
        session_factory, job["id"], "img/01500.png", code="image.corrupt", message="x"
    )
    answer = client.get(f"/v1/jobs/{job['id']}/results.jsonl", headers=api_user.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert [row["key"] for row in rows] == [f"img/{i:05d}.png" for i in range(2345)]
    assert rows[1500]["error"]["code"] == "image.corrupt"
    failed = client.get(
        f"/v1/jobs/{job['id']}/results.jsonl", params={"state": "failed"}, headers=api_user.headers
    )
    assert [json.loads(line)["key"] for line in failed.text.splitlines()] == ["img/01500.png"]


def test_list_jobs_filters_and_cursor(client: TestClient, api_user: ApiUser, model_id: str) -> None:
    made = [
        submit(client, api_user, model_id, 2, kind)
        for kind in ("explanations", "predictions", "explanations")
    ]
    explain = client.get("/v1/jobs", params={"kind": "explain"}, headers=api_user.headers).json()
    assert [j["id"] for j in explain["items"]] == [made[2]["id"], made[0]["id"]]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, "state": "queued"} | (
            {"cursor": cursor} if cursor else {}
        )
        page = client.get("/v1/jobs", params=params, headers=api_user.headers).json()
        seen += [j["id"] for j in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(seen) == 4 and seen[:3] == [m["id"] for m in reversed(made)]  # + the training job
    assert_problem(
        client.get("/v1/jobs", params={"state": "sleeping"}, headers=api_user.headers),
        422,
        "request.invalid",
    )


def test_cancel(
    client: TestClient, api_user: ApiUser, model_id: str, session_factory: SessionFactory
) -> None:
    queued = submit(client, api_user, model_id, 3)
    answer = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=api_user.headers)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    items = client.get(f"/v1/jobs/{queued['id']}/results", headers=api_user.headers).json()["items"]
    assert {item["state"] for item in items} == {"cancelled"}
    assert (
        client.post(f"/v1/jobs/{queued['id']}/cancel", headers=api_user.headers).status_code == 200
    )

    running = submit(client, api_user, model_id, 3)
    with session_scope(session_factory) as session:
        chunk_id = repo.list_chunks(session, running["id"])[0].id
    claim = jobs.claim_chunk(
        session_factory, chunk_id, "worker-1", lease_seconds=60, max_attempts=3
    )
    assert claim.claimed
    answer = client.post(f"/v1/jobs/{running['id']}/cancel", headers=api_user.headers)
    assert answer.status_code == 202 and answer.json()["state"] == "cancelling"
    assert answer.json()["cancel_requested"] is True

    done = submit(client, api_user, model_id, 2)
    finish(client, session_factory, api_user, done)
    assert_problem(
        client.post(f"/v1/jobs/{done['id']}/cancel", headers=api_user.headers),
        409,
        "job.already_finished",
    )


def test_models_and_hierarchy(client: TestClient, api_user: ApiUser, model_id: str) -> None:
    model = client.get(f"/v1/models/{model_id}", headers=api_user.headers).json()
    assert model["state"] == "ready" and model["metrics"] == {"p@1": 0.5}
    assert model["params"]["layer_sizes"] == [8, 4] and model["training_job_id"].startswith("job_")
    hierarchy = client.get(f"/v1/models/{model_id}/hierarchy", headers=api_user.headers)
    assert hierarchy.json()["layers"][0]["units"][0]["members"] == [["salt", 1.0]]
    pending = client.post(
        "/v1/models",
        json={"dataset_id": model["dataset_id"], "name": "p"},
        headers=api_user.headers,
    ).json()["model"]["id"]
    assert_problem(
        client.get(f"/v1/models/{pending}/hierarchy", headers=api_user.headers),
        409,
        "model.not_ready",
    )
    ready = client.get("/v1/models", params={"state": "ready"}, headers=api_user.headers).json()
    assert [m["id"] for m in ready["items"]] == [model_id]


def test_other_tenants_get_404_everywhere(
    client: TestClient,
    api_user: ApiUser,
    model_id: str,
    make_api_user: Callable[[], ApiUser],
    session_factory: SessionFactory,
) -> None:
    job = submit(client, api_user, model_id, 2)
    finish(client, session_factory, api_user, job)
    stranger = make_api_user().headers
    job_id = job["id"]
    for method, path, code in [
        ("GET", f"/v1/jobs/{job_id}", "job.not_found"),
        ("GET", f"/v1/jobs/{job_id}/results", "job.not_found"),
        ("GET", f"/v1/jobs/{job_id}/results.jsonl", "job.not_found"),
        ("POST", f"/v1/jobs/{job_id}/cancel", "job.not_found"),
        ("GET", f"/v1/models/{model_id}", "model.not_found"),
        ("GET", f"/v1/models/{model_id}/hierarchy", "model.not_found"),
    ]:
        assert_problem(client.request(method, path, headers=stranger), 404, code)
    assert client.get("/v1/jobs", headers=stranger).json()["items"] == []
    assert client.get("/v1/models", headers=stranger).json()["items"] == []
    mine = client.get(f"/v1/jobs/{job_id}", headers=api_user.headers).json()
    assert mine["state"] == "succeeded" and not mine["cancel_requested"]
