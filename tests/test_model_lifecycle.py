"""A model's state follows its training job (xmlx.jobs.model_state): every end of the
job leaves the model `ready` or `failed` with a code; a failed model retrains under
the same id. Kernel level, real database; the worker paths run without TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_fixtures import TEST_PEPPER
from workers.context import WorkerContext, build_context
from workers.training import run_training_claimed
from xmlx import jobs, keys, migrate
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs import LeaseRef
from xmlx.models import ModelState
from xmlx.settings import Settings

LEASE = 30


@pytest.fixture
def ctx(make_database_url: Any, tmp_path: Path) -> Iterator[WorkerContext]:
    url = make_database_url()
    migrate.upgrade(url)
    settings = Settings(
        env="test", data_dir=tmp_path / "data", database_url=url, storage_backend="local",
        local_storage_root=tmp_path / "storage", api_key_pepper=TEST_PEPPER, lease_seconds=LEASE,
    )  # fmt: skip
    context = build_context(settings)
    yield context
    context.sessions.kw["bind"].dispose()


def training_job(sessions: SessionFactory, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """(job id, model id) of a queued training job on a fresh tenant."""
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"t{utcnow().timestamp()}").id
        dataset = repo.create_dataset(session, tenant, name="d")
        model_id = repo.create_model(session, tenant, dataset.id, name="m", params={}).id
    created = jobs.create_job(
        sessions, tenant_id=tenant, kind="train", item_keys=["model"], model_id=model_id,
        chunk_size=1, params=params or {},
    )  # fmt: skip
    return created.job.id, model_id


def take(sessions: SessionFactory, owner: str = "w1", **kw: Any) -> jobs.Claim:
    return jobs.claim_next(
        sessions, owner, lease_seconds=LEASE, max_attempts=kw.pop("max_attempts", 3),
        max_retries=5, **kw,
    )  # fmt: skip


def model_state(sessions: SessionFactory, model_id: str) -> tuple[str, str | None]:
    with session_scope(sessions) as session:
        model = repo.get_model_unscoped(session, model_id)
        assert model is not None
        return model.state, model.error_code


def test_a_claimed_training_makes_its_model_training_and_success_ready(ctx) -> None:
    sessions = ctx.sessions
    job_id, model_id = training_job(sessions)
    assert model_state(sessions, model_id) == (ModelState.PENDING, None)
    claim = take(sessions)
    assert model_state(sessions, model_id) == (ModelState.TRAINING, None)
    key = keys.model_artifact_key(claim.job.tenant_id, model_id, "model.a1.zip")  # type: ignore[union-attr]
    jobs.record_model_trained(
        sessions, job_id, "model", lease=LeaseRef(claim.chunk_id, "w1"), model_id=model_id,
        artifact_key=key, result={}, model_fields={},
    )  # fmt: skip
    assert model_state(sessions, model_id) == (ModelState.READY, None)


def test_a_training_that_fails_fails_its_model_with_the_items_code(ctx) -> None:
    """Through the worker: no image of the dataset can be read."""
    manifest = "tenants/x/manifest.csv"
    ctx.store.put_bytes(manifest, b"image,labels\nmissing1.png,a|b\nmissing2.png,b\n")
    params = {"dataset": {"manifest_key": manifest, "image_prefix": "tenants/x/img/"},
              "training": {"image_size": [32, 32]}}  # fmt: skip
    _, model_id = training_job(ctx.sessions, params)
    claim = take(ctx.sessions, ctx.owner)
    assert run_training_claimed(ctx, claim) == "failed"
    assert model_state(ctx.sessions, model_id) == (ModelState.FAILED, "dataset.no_images")


def test_cancel_while_queued_fails_the_model(ctx) -> None:
    job_id, model_id = training_job(ctx.sessions)
    job = jobs.get_job(ctx.sessions, *_tenant_and(ctx.sessions, job_id))
    jobs.request_cancel(ctx.sessions, job.tenant_id, job_id)
    assert model_state(ctx.sessions, model_id) == (ModelState.FAILED, "job.cancelled")


def test_cancel_while_running_fails_the_model_when_the_worker_lets_go(ctx) -> None:
    sessions = ctx.sessions
    job_id, model_id = training_job(sessions)
    claim = take(sessions)
    jobs.request_cancel(sessions, claim.job.tenant_id, job_id)  # type: ignore[union-attr]
    assert model_state(sessions, model_id) == (ModelState.TRAINING, None)  # still running
    jobs.release_chunk(sessions, claim.chunk_id, "w1")
    assert model_state(sessions, model_id) == (ModelState.FAILED, "job.cancelled")


def test_attempts_exhausted_fail_the_model(ctx) -> None:
    sessions = ctx.sessions
    _, model_id = training_job(sessions)
    now = utcnow()
    for attempt in range(2):
        assert take(sessions, f"w{attempt}", now=now, max_attempts=2).claimed
        now += timedelta(seconds=LEASE + 1)  # the worker died: its lease runs out
    assert not take(sessions, "w9", now=now, max_attempts=2).claimed
    assert model_state(sessions, model_id) == (ModelState.FAILED, "chunk.max_attempts")


def test_the_reconciler_closing_a_cancelled_training_fails_the_model(ctx) -> None:
    sessions = ctx.sessions
    job_id, model_id = training_job(sessions)
    claim = take(sessions)
    jobs.request_cancel(sessions, claim.job.tenant_id, job_id)  # type: ignore[union-attr]
    later = utcnow() + timedelta(seconds=LEASE + 120)  # the worker died while cancelling
    jobs.reconcile(sessions, grace_seconds=60, now=later)
    assert model_state(sessions, model_id) == (ModelState.FAILED, "job.cancelled")


def test_a_failed_model_retrains_under_its_id_and_an_old_job_cannot_touch_it(ctx) -> None:
    sessions = ctx.sessions
    job_id, model_id = training_job(sessions)
    tenant_id, _ = _tenant_and(sessions, job_id)
    jobs.request_cancel(sessions, tenant_id, job_id)
    assert model_state(sessions, model_id)[0] == ModelState.FAILED
    jobs.create_job(
        sessions, tenant_id=tenant_id, kind="train", item_keys=["model"], model_id=model_id,
        chunk_size=1,
    )  # fmt: skip
    assert model_state(sessions, model_id) == (ModelState.PENDING, None)
    jobs.fail_job(sessions, job_id, "job.late", "an old job closing late")
    assert model_state(sessions, model_id) == (ModelState.PENDING, None)


def _tenant_and(sessions: SessionFactory, job_id: str) -> tuple[str, str]:
    with session_scope(sessions) as session:
        job = repo.get_job_unscoped(session, job_id)
        assert job is not None
        return job.tenant_id, job_id
