"""The API's side of "a model's state follows its job" (issue 12 item 4): a training
whose job row cannot be created, and one whose enqueue fails. Real database (a private
one per test: the first test installs a trigger that refuses job rows) and the real
app; the broker is a Redis port nobody listens on, so sending really fails."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api_fixtures import API_TEST_PEPPER, ApiUser, create_dataset
from xmlx import jobs, keys, migrate
from xmlx import repository as repo
from xmlx.db import SessionFactory, create_engine, make_session_factory, session_scope, utcnow
from xmlx.embedded_redis import free_port
from xmlx.models import ModelState
from xmlx.settings import Settings

REFUSE_JOBS = {
    "postgresql": [
        "CREATE FUNCTION refuse_jobs() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'the jobs table refuses new rows'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs FOR EACH ROW "
        "EXECUTE FUNCTION refuse_jobs()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs BEGIN "
        "SELECT RAISE(ABORT, 'the jobs table refuses new rows'); END",
    ],
}
ALLOW_JOBS = {
    "postgresql": ["DROP TRIGGER refuse_jobs ON jobs", "DROP FUNCTION refuse_jobs()"],
    "sqlite": ["DROP TRIGGER refuse_jobs"],
}


@pytest.fixture
def private(
    make_database_url: Callable[[], str], make_api_settings: Callable[..., Settings]
) -> Iterator[tuple[sa.Engine, SessionFactory, Callable[..., Settings]]]:
    url = make_database_url()
    migrate.upgrade(url)
    engine = create_engine(url)

    def settings(**overrides: Any) -> Settings:
        return make_api_settings(database_url=url, **overrides)

    yield engine, make_session_factory(engine), settings
    engine.dispose()


def _user(sessions: SessionFactory) -> ApiUser:
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"life-{uuid.uuid4().hex}")
        _row, plaintext = repo.create_api_key(session, tenant.id, API_TEST_PEPPER, "test")
        return ApiUser(tenant.id, plaintext)


def _model(sessions: SessionFactory, model_id: str) -> tuple[str, str | None]:
    with session_scope(sessions) as session:
        model = repo.get_model_unscoped(session, model_id)
        assert model is not None
        return model.state, model.error_code


def _run_sql(engine: sa.Engine, statements: dict[str, list[str]]) -> None:
    with engine.begin() as connection:
        for sql in statements[engine.dialect.name]:
            connection.execute(sa.text(sql))


def test_a_training_whose_job_cannot_be_created_fails_its_model(private, tmp_path: Path) -> None:
    engine, sessions, settings = private
    with TestClient(create_app(settings()), raise_server_exceptions=False) as client:
        user = _user(sessions)
        dataset = create_dataset(client, user, tmp_path)
        _run_sql(engine, REFUSE_JOBS)  # the database refuses the job row, for real
        body = {"dataset_id": dataset["id"], "name": "m"}
        answer = client.post("/v1/models", json=body, headers=user.headers)
        assert answer.status_code == 500, answer.text
        with session_scope(sessions) as session:
            (model,) = repo.list_models(session, user.tenant_id).rows
            model_id = model.id
        # Not pending forever: failed, with the code and the reason.
        assert _model(sessions, model_id) == (ModelState.FAILED, "job.not_created")
        shown = client.get(f"/v1/models/{model_id}", headers=user.headers).json()
        assert shown["state"] == "failed" and "jobs table refuses" in str(shown)
        # Once the database takes rows again, the failed model retrains under its id.
        _run_sql(engine, ALLOW_JOBS)
        retrained = client.post(f"/v1/models/{model_id}/retrain", headers=user.headers)
        assert retrained.status_code == 202, retrained.text
        assert _model(sessions, model_id) == (ModelState.PENDING, None)


def test_a_training_whose_enqueue_fails_waits_for_the_reconciler(private, tmp_path: Path) -> None:
    """Broker down at submit: the job is committed and queued, the model pending (not
    failed: the job exists and will run); the reconciler sends it, a worker leases it
    (model training) and its end moves the model (ready)."""
    _engine, sessions, settings = private
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(settings(redis_url=dead_broker))) as client:
        user = _user(sessions)
        dataset = create_dataset(client, user, tmp_path)
        answer = client.post("/v1/models", json={"dataset_id": dataset["id"]}, headers=user.headers)
        assert answer.status_code == 202, answer.text
        assert "xmlx_enqueue_failures_total 1.0" in client.get("/metrics").text
    job_id, model_id = answer.json()["job"]["id"], answer.json()["model"]["id"]
    assert answer.json()["job"]["state"] == "queued"
    assert _model(sessions, model_id) == (ModelState.PENDING, None)
    with session_scope(sessions) as session:
        (chunk_id,) = session.scalars(sa.text("SELECT id FROM chunks WHERE job_id = :j"),
                                      {"j": job_id}).all()  # fmt: skip
    # Within its grace the reconciler leaves it alone (the message may be on its way)...
    assert jobs.reconcile(sessions, grace_seconds=60) == []
    # ...then sends it (no message ever reached the queue).
    later = utcnow() + timedelta(seconds=120)
    refs = jobs.reconcile(sessions, grace_seconds=60, queued_messages=0, now=later)
    assert [ref.chunk_id for ref in refs] == [chunk_id]
    claim = jobs.claim_chunk(sessions, chunk_id, "w1", lease_seconds=30, max_attempts=3)
    assert claim.claimed and _model(sessions, model_id) == (ModelState.TRAINING, None)
    key = keys.model_artifact_key(user.tenant_id, model_id, "model.a1.zip")
    jobs.record_model_trained(
        sessions, job_id, "model", lease=jobs.LeaseRef(chunk_id, "w1"), model_id=model_id,
        artifact_key=key, result={}, model_fields={},
    )  # fmt: skip
    jobs.complete_chunk(sessions, chunk_id, "w1")
    assert _model(sessions, model_id) == (ModelState.READY, None)
