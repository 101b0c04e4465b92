"""Deletion through the HTTP API (soft delete, 404s, 409s, quotas) and the purge kernel
(resumable, idempotent, concurrent purges), on the test database and a local store.

The purge task's kernel call (`xmlx.purge.run_purge`) runs in the test process; the
real worker runs it in tests/test_deletion_service.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.api_fixtures import (
    API_TEST_PEPPER,
    ApiUser,
    assert_problem,
    make_ready_model,
    queued_messages,
    run_preparation,
    upload_files,
)
from tests.deletion_fixtures import finished_job
from tests.test_api_batches import MANIFEST, small_dataset
from xmlx import jobs, orphans, purge, purge_sweep, quotas
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.models import Chunk, Item, Job, Model, Purge, Tenant
from xmlx.storage import ObjectStore


def _state(client: TestClient) -> Any:
    return client.app.state.xmlx  # type: ignore[attr-defined]


def _purge_all(client: TestClient, purge_id: str) -> str:
    state = _state(client)
    return purge.run_purge(state.sessions, state.store, purge_id, budget_seconds=30)


def _rows(sessions: SessionFactory, job_id: str) -> tuple[int, int, int]:
    with session_scope(sessions) as session:
        items = session.scalar(select(func.count()).where(Item.job_id == job_id))
        chunks = session.scalar(select(func.count()).where(Chunk.job_id == job_id))
        job = session.get(Job, job_id)
    return int(items or 0), int(chunks or 0), int(job is not None)


def _files(store: ObjectStore, tenant_id: str, what: str) -> list[str]:
    return store.list_keys(f"tenants/{tenant_id}/{what}")


def test_a_deleted_job_is_gone_at_once_and_purged_later(
    client: TestClient, api_user: ApiUser, broker: redis.Redis
) -> None:
    state, headers = _state(client), api_user.headers
    job_id = finished_job(state.sessions, state.store, api_user.tenant_id, 60)
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["state"] == "succeeded"
    assert len(_files(state.store, api_user.tenant_id, f"jobs/{job_id}/")) == 120

    answer = client.delete(f"/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 202, answer.text
    record = answer.json()
    assert (record["kind"], record["target"], record["state"]) == ("job", job_id, "pending")
    assert queued_messages(broker, "default") == [("xmlx.purge", [record["id"]])]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results"):
        assert_problem(client.get(path, headers=headers), 404, "job.not_found")
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert_problem(cancel, 404, "job.not_found")
    export = client.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"}, headers=headers)
    assert_problem(export, 404, "job.not_found")
    assert job_id not in {j["id"] for j in client.get("/v1/jobs", headers=headers).json()["items"]}
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=headers), 404, "job.not_found")

    assert _purge_all(client, record["id"]) == purge.DONE
    assert _rows(state.sessions, job_id) == (0, 0, 0)
    assert _files(state.store, api_user.tenant_id, f"jobs/{job_id}/") == []
    shown = client.get(f"/v1/purges/{record['id']}", headers=headers).json()
    assert (shown["state"], shown["objects_deleted"]) == ("done", 120)
    assert shown["rows_deleted"] == 60 + 1 + 1  # items, one chunk of 100, the job
    assert _purge_all(client, record["id"]) == purge.DONE  # a redelivered message


def test_a_killed_purge_resumes_from_its_last_page(
    client: TestClient, api_user: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(client)
    job_id = finished_job(state.sessions, state.store, api_user.tenant_id, 40)
    monkeypatch.setattr(purge, "OBJECT_PAGE", 25)
    monkeypatch.setattr(purge, "ROW_BATCH", 15)
    record = client.delete(f"/v1/jobs/{job_id}", headers=api_user.headers).json()
    # One step per run: the budget is spent after each page.
    assert purge.run_purge(state.sessions, state.store, record["id"], budget_seconds=0) == "paused"
    assert purge.run_purge(state.sessions, state.store, record["id"], budget_seconds=0) == "paused"
    shown = client.get(f"/v1/purges/{record['id']}", headers=api_user.headers).json()
    assert (shown["stage"], shown["objects_deleted"]) == ("objects", 25)
    # A worker took it and died: its lease blocks others until it runs out.
    now = utcnow()
    assert purge._claim(state.sessions, record["id"], now, now + timedelta(seconds=120))
    assert purge.run_purge(state.sessions, state.store, record["id"]) == purge.BUSY
    later = now + timedelta(seconds=121)
    outcome = purge.run_purge(state.sessions, state.store, record["id"], now=lambda: later)
    assert outcome == purge.DONE
    assert _rows(state.sessions, job_id) == (0, 0, 0)
    assert _files(state.store, api_user.tenant_id, "jobs/") == []
    shown = client.get(f"/v1/purges/{record['id']}", headers=api_user.headers).json()
    assert shown["objects_deleted"] == 80 and shown["rows_deleted"] == 42


def test_deleting_a_model_while_its_job_is_purged_is_safe(
    client: TestClient, api_user: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, headers = _state(client), api_user.headers
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, state.sessions, dataset["id"])
    training = client.get(f"/v1/models/{model_id}", headers=headers).json()["training_job_id"]
    assert_problem(client.delete(f"/v1/models/{model_id}", headers=headers), 409, "model.in_use")
    assert_problem(
        client.delete(f"/v1/datasets/{dataset['id']}", headers=headers), 409, "dataset.in_use"
    )
    client.post(f"/v1/jobs/{training}/cancel", headers=headers)
    state.store.put_bytes(f"tenants/{api_user.tenant_id}/models/{model_id}/model.zip", b"zip")
    job_id = finished_job(state.sessions, state.store, api_user.tenant_id, 30, model_id=model_id)
    monkeypatch.setattr(purge, "OBJECT_PAGE", 20)
    first = client.delete(f"/v1/jobs/{job_id}", headers=headers).json()
    assert purge.run_purge(state.sessions, state.store, first["id"], budget_seconds=0) == "paused"
    answer = client.delete(f"/v1/models/{model_id}", headers=headers)  # mid-purge
    assert answer.status_code == 202, answer.text
    second = answer.json()
    assert_problem(client.get(f"/v1/models/{model_id}", headers=headers), 404, "model.not_found")
    assert_problem(client.get(f"/v1/jobs/{training}", headers=headers), 404, "job.not_found")
    for record in (second, first):  # the model's purge reaches the job first
        assert _purge_all(client, record["id"]) == purge.DONE
    with session_scope(state.sessions) as session:
        assert session.get(Model, model_id) is None
    assert _rows(state.sessions, job_id) == (0, 0, 0)
    assert _rows(state.sessions, training) == (0, 0, 0)
    assert _files(state.store, api_user.tenant_id, "jobs/") == []
    assert _files(state.store, api_user.tenant_id, "models/") == []
    # The dataset no longer has a live training: it goes too.
    answer = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers)
    assert answer.status_code == 202, answer.text
    assert _purge_all(client, answer.json()["id"]) == purge.DONE
    assert _files(state.store, api_user.tenant_id, "datasets/") == []
    assert client.get("/v1/datasets", headers=headers).json()["items"] == []


def test_deleting_a_running_job_cancels_it_and_waits_for_its_worker(
    client: TestClient, api_user: ApiUser
) -> None:
    state = _state(client)
    created = jobs.create_job(
        state.sessions, tenant_id=api_user.tenant_id, kind="predict", item_keys=["a", "b"]
    )
    chunk_id = created.chunk_ids[0]
    claim = jobs.claim_chunk(state.sessions, chunk_id, "worker-1", lease_seconds=60, max_attempts=3)
    assert claim.status == "claimed"
    record = client.delete(f"/v1/jobs/{created.job.id}", headers=api_user.headers).json()
    with session_scope(state.sessions) as session:
        job = session.get(Job, created.job.id)
        assert job is not None and job.cancel_requested and job.state == "cancelling"
    assert purge.run_purge(state.sessions, state.store, record["id"]) == purge.WAITING
    jobs.release_chunk(state.sessions, chunk_id, "worker-1")  # the worker saw the flag
    assert _purge_all(client, record["id"]) == purge.DONE
    assert _rows(state.sessions, created.job.id) == (0, 0, 0)


def test_uploads_are_deleted_by_prefix(client: TestClient, api_user: ApiUser) -> None:
    state, headers = _state(client), api_user.headers
    upload_files(client, api_user, {"b1/x.png": b"x", "b1/y.png": b"y", "b2/z.png": b"z"}, "x/y")
    answer = client.delete("/v1/uploads", params={"prefix": "b1/"}, headers=headers)
    assert answer.status_code == 202, answer.text
    record = answer.json()
    assert record["target"] == "b1/"
    # Gone at once, before the purge: a second DELETE (or one of a folder inside) is
    # 404, and presigning a new upload there is refused while the purge may run.
    for prefix in ("b1/", "b1/x", "b"):
        again = client.delete("/v1/uploads", params={"prefix": prefix}, headers=headers)
        if prefix != "b":
            assert_problem(again, 404, "uploads.not_found")
        else:  # a wider prefix still holds b2/: a purge of its own
            assert again.status_code == 202 and again.json()["id"] != record["id"]
            _finish_pending(state.sessions, again.json()["id"])  # b2/ stays for below
    new_upload = {"keys": ["b2/ok.png", "b1/new.png"], "content_type": "image/png"}
    refused = client.post("/v1/uploads", json=new_upload, headers=headers)
    assert_problem(refused, 409, "uploads.purging")
    assert record["id"] in refused.json()["detail"]
    assert len(_files(state.store, api_user.tenant_id, "uploads/b1/")) == 2  # not purged yet
    assert _purge_all(client, record["id"]) == purge.DONE
    assert client.post("/v1/uploads", json=new_upload, headers=headers).status_code == 200
    assert _files(state.store, api_user.tenant_id, "uploads/") == [
        f"tenants/{api_user.tenant_id}/uploads/b2/z.png"
    ]
    gone = client.delete("/v1/uploads", params={"prefix": "b1/"}, headers=headers)
    assert_problem(gone, 404, "uploads.not_found")
    bad = client.delete("/v1/uploads", params={"prefix": "../x"}, headers=headers)
    assert bad.status_code == 422


def _finish_pending(sessions: SessionFactory, purge_id: str) -> None:
    """Mark a purge done without running it (its prefix is readable again)."""
    with session_scope(sessions) as session:
        row = session.get(Purge, purge_id)
        assert row is not None
        row.state = "done"


def test_deleted_uploads_are_gone_for_reads_before_their_purge(
    client: TestClient, api_user: ApiUser
) -> None:
    user, state, headers = api_user, _state(client), api_user.headers
    model_id = make_ready_model(client, user, state.sessions, small_dataset(client, user)["id"])
    files = {f"batch/{i}.png": b"x" for i in range(4)} | {"batch/old/a.png": b"x"}
    upload_files(client, user, files, "image/png")
    upload_files(client, user, {"lists/keys.txt": b"batch/0.png\n"}, "text/plain")
    upload_files(client, user, {"lists/set.csv": MANIFEST}, "text/csv")
    for prefix in ("batch/old/", "batch/3", "lists/"):
        answer = client.delete("/v1/uploads", params={"prefix": prefix}, headers=headers)
        assert answer.status_code == 202, answer.text
    # A listing leaves deleted uploads out; manifests under them are not found.
    job = client.post("/v1/predictions", json={"model_id": model_id, "prefix": "batch/"},
                      headers=headers).json()  # fmt: skip
    assert run_preparation(client, job["id"]).state == "queued"
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=headers).json()
    assert [item["key"] for item in results["items"]] == ["batch/0.png", "batch/1.png",
                                                          "batch/2.png"]  # fmt: skip
    by_manifest = {"model_id": model_id, "manifest_key": "lists/keys.txt"}
    answer = client.post("/v1/predictions", json=by_manifest, headers=headers)
    assert_problem(answer, 422, "manifest.not_found")
    dataset = {"name": "d", "images_prefix": "batch/", "manifest_key": "lists/set.csv"}
    assert_problem(client.post("/v1/datasets", json=dataset, headers=headers), 422,
                   "manifest.not_found")  # fmt: skip
    # The objects themselves are still there: only the purge removes them.
    assert len(_files(state.store, user.tenant_id, "uploads/lists/")) == 2


def _limit(sessions: SessionFactory, tenant_id: str, **limits: int | None) -> None:
    with session_scope(sessions) as session:
        values = {"retention_days": None, "max_stored_bytes": None, "max_items_in_flight": None}
        quotas.set_limits(session, tenant_id, **{**values, **limits})  # type: ignore[arg-type]


def test_quotas_refuse_with_the_usage_in_the_answer(
    client: TestClient, api_user: ApiUser, broker: redis.Redis
) -> None:
    state, headers = _state(client), api_user.headers
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, state.sessions, dataset["id"])
    body = {"model_id": model_id, "images": [f"i{n}.png" for n in range(5)], "k": 3}
    _limit(state.sessions, api_user.tenant_id, max_items_in_flight=5)  # the training holds 1
    body = {**body, "dataset_id": dataset["id"]}
    refused = assert_problem(client.post("/v1/predictions", json=body, headers=headers), 429,
                             "quota.items_in_flight")  # fmt: skip
    assert (refused["usage"], refused["limit"]) == (1, 5)
    ok = client.post(
        "/v1/predictions", json={**body, "images": body["images"][:4]}, headers=headers
    )
    assert ok.status_code == 202, ok.text

    stored = quotas.recount_usage(state.sessions, state.store, api_user.tenant_id)
    assert stored == 2 * len(MANIFEST)  # the uploaded manifest and the dataset's copy
    _limit(state.sessions, api_user.tenant_id, max_stored_bytes=stored)
    refused = assert_problem(
        client.post("/v1/uploads", json={"keys": ["z.png"], "content_type": "image/png"},
                    headers=headers),
        403, "quota.storage_exceeded",
    )  # fmt: skip
    assert (refused["usage"], refused["limit"]) == (stored, stored)
    assert client.post("/v1/predictions", json=body, headers=headers).status_code == 403
    # Deleting makes room: the purge takes the freed bytes off the account.
    record = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers)
    assert record.status_code == 409  # its model's training is still queued
    upload_removed = client.delete("/v1/uploads", params={"prefix": "set/"}, headers=headers)
    assert _purge_all(client, upload_removed.json()["id"]) == purge.DONE
    with session_scope(state.sessions) as session:
        assert quotas.stored_bytes(session, api_user.tenant_id) < stored
    answer = client.post("/v1/uploads", json={"keys": ["z.png"], "content_type": "image/png"},
                         headers=headers)  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_retention_and_the_orphan_sweep(client: TestClient, api_user: ApiUser) -> None:
    state = _state(client)
    old = finished_job(state.sessions, state.store, api_user.tenant_id, 10)
    new = finished_job(state.sessions, state.store, api_user.tenant_id, 10)
    with session_scope(state.sessions) as session:
        job = session.get(Job, old)
        assert job is not None and job.finished_at is not None
        job.finished_at = utcnow() - timedelta(days=8)
    orphan = f"tenants/{api_user.tenant_id}/jobs/{new}/items/ffffffffffffffff/a2-00000000/x.png"
    state.store.put_bytes(orphan, b"left by a crash")
    _limit(state.sessions, api_user.tenant_id, retention_days=7)

    later = utcnow() + timedelta(minutes=5)  # past the grace
    # Each tick checks a bounded number of the oldest unchecked jobs; the shared test
    # database holds other tests' finished jobs, so tick until this one's turn came.
    sends: list[str] = []
    expired = orphan_files = 0
    for _tick in range(200):
        outcome = purge_sweep.sweep(
            state.sessions, state.store, grace_seconds=60, recount_every_seconds=3600, now=later
        )
        sends += outcome.send
        expired += outcome.expired_jobs
        orphan_files += outcome.orphan_files
        with session_scope(state.sessions) as session:
            if new not in orphans.jobs_due(session, later, limit=1_000_000):
                break
    assert expired >= 1 and orphan_files >= 1
    assert_problem(client.get(f"/v1/jobs/{old}", headers=api_user.headers), 404, "job.not_found")
    assert client.get(f"/v1/jobs/{new}", headers=api_user.headers).status_code == 200
    for purge_id in sends:
        _purge_all(client, purge_id)
    assert _files(state.store, api_user.tenant_id, f"jobs/{old}/") == []
    assert not state.store.exists(orphan)
    assert len(_files(state.store, api_user.tenant_id, f"jobs/{new}/")) == 20  # named ones kept
    with session_scope(state.sessions) as session:
        assert new not in orphans.jobs_due(session, later)  # checked once
        tenant = session.get(Tenant, api_user.tenant_id)
        assert tenant is not None and tenant.retention_days == 7


def test_limits_are_set_over_the_admin_api_and_the_cli(
    client: TestClient,
    api_user: ApiUser,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from xmlx.cli import app as cli_app
    from xmlx.settings import get_settings

    state = _state(client)
    with session_scope(state.sessions) as session:
        tenant = session.get(Tenant, api_user.tenant_id)
        assert tenant is not None
        name = tenant.name
        _row, secret = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "ops", ["admin"])
    admin = {"Authorization": f"Bearer {secret}"}
    url = f"/v1/admin/tenants/{api_user.tenant_id}/limits"
    answer = client.put(url, json={"retention_days": 30, "max_items_in_flight": 100}, headers=admin)
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert (shown["retention_days"], shown["max_items_in_flight"]) == (30, 100)
    assert shown["max_stored_bytes"] is None and shown["items_in_flight"] == 0
    assert client.put(url, json={"retention_days": 0}, headers=admin).status_code == 422
    assert_problem(client.get(url, headers=api_user.headers), 403, "auth.insufficient_scope")

    monkeypatch.setenv("XMLX_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        args = ["tenants", "limits", "--tenant", name, "--max-stored-bytes", "5000"]
        done = CliRunner().invoke(cli_app, [*args, "--clear", "retention-days"])
        assert done.exit_code == 0, done.output
        assert "max-stored-bytes     5000" in done.output
        bad = CliRunner().invoke(cli_app, ["tenants", "limits", "--tenant", name, "--clear", "x"])
        assert bad.exit_code != 0
    finally:
        get_settings.cache_clear()
    shown = client.get(url, headers=admin).json()
    assert (shown["retention_days"], shown["max_stored_bytes"]) == (None, 5000)
    assert shown["max_items_in_flight"] == 100


def test_a_deleted_dataset_leaves_its_models_working(client: TestClient, api_user: ApiUser) -> None:
    state, headers = _state(client), api_user.headers
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, state.sessions, dataset["id"])
    training = client.get(f"/v1/models/{model_id}", headers=headers).json()["training_job_id"]
    client.post(f"/v1/jobs/{training}/cancel", headers=headers)
    record = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers).json()
    assert _purge_all(client, record["id"]) == purge.DONE
    assert _files(state.store, api_user.tenant_id, "datasets/") == []
    path = f"/v1/datasets/{dataset['id']}"
    assert_problem(client.get(path, headers=headers), 404, "dataset.not_found")
    body = {"model_id": model_id, "images": ["set/images/a.png"], "k": 3}
    assert client.post("/v1/predictions", json=body, headers=headers).status_code == 202
    with session_scope(state.sessions) as session:  # a tombstone: its model names it
        assert repo.get_dataset(session, api_user.tenant_id, dataset["id"], deleted=True)
    jobs_of_model = client.get("/v1/jobs", headers=headers).json()["items"]
    for job in jobs_of_model:
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    record = client.delete(f"/v1/models/{model_id}", headers=headers).json()
    assert _purge_all(client, record["id"]) == purge.DONE
    with session_scope(state.sessions) as session:
        assert repo.get_dataset(session, api_user.tenant_id, dataset["id"], deleted=True) is None


def test_a_listed_batch_past_the_items_limit_fails_with_the_quota_code(
    client: TestClient, api_user: ApiUser
) -> None:
    state, headers = _state(client), api_user.headers
    dataset = small_dataset(client, api_user)
    model_id = make_ready_model(client, api_user, state.sessions, dataset["id"])
    upload_files(client, api_user, {f"many/{i}.png": b"x" for i in range(5)}, "image/png")
    _limit(state.sessions, api_user.tenant_id, max_items_in_flight=4)  # the training holds 1
    body = {"model_id": model_id, "prefix": "many/"}
    job = client.post("/v1/predictions", json=body, headers=headers).json()
    assert job["state"] == "preparing"  # one more item fits: the size is not known yet
    prepared = run_preparation(client, job["id"])
    assert prepared.state == "failed"
    shown = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert shown["error"]["code"] == "quota.items_in_flight", shown
    _limit(state.sessions, api_user.tenant_id, max_items_in_flight=1)
    refused = client.post("/v1/predictions", json=body, headers=headers)
    assert_problem(refused, 429, "quota.items_in_flight")
