"""Deletion end to end: a real API process, a real worker, SeaweedFS, Redis, the database.

A finished job of 1,000 items with two artifact files each (recorded as a worker
records them) is deleted through the HTTP API; the worker's `xmlx.purge` tasks (a
1-second budget, so the purge spans several messages) remove every row and object.
The job's model is deleted while the job's purge runs, and a second DELETE of the job
is 404 (all through `xmlx.client.Client`): both purges finish and nothing is left in
the database or in the bucket's listing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.deletion_fixtures import finished_job
from tests.kernel_fixtures import make_s3_store
from tests.service_fixtures import running_stack
from xmlx import repository as repo
from xmlx.client import ApiError, Client
from xmlx.db import create_engine, make_session_factory, session_scope
from xmlx.models import Chunk, Item, Job, Model, ModelState
from xmlx.settings import DEV_API_KEY_PEPPER
from xmlx.stack import BUCKET, Stack
from xmlx.storage import ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_ITEMS = 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deletion")
    env = {"XMLX_PURGE_BUDGET_SECONDS": "1"}
    yield from running_stack(root, beat=False, extra_env=env)


def _store(stack: Stack) -> ObjectStore:
    assert stack.s3 is not None
    return make_s3_store(stack.s3, BUCKET)


def _wait_done(client: Client, purge_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = client.purge(purge_id)
        if shown["state"] == "done":
            return dict(shown)
        time.sleep(0.2)
    raise AssertionError(f"purge {purge_id} not done in {timeout} s: {shown}")


def test_a_deleted_job_of_1000_items_leaves_no_row_and_no_object(
    stack: Stack, tmp_path: Path
) -> None:
    engine = create_engine(stack.env["XMLX_DATABASE_URL"])
    sessions = make_session_factory(engine)
    store = _store(stack)
    pepper = stack.env.get("XMLX_API_KEY_PEPPER", DEV_API_KEY_PEPPER)
    with session_scope(sessions) as session:
        tenant = repo.create_tenant(session, f"del-{uuid.uuid4().hex[:8]}")
        _key, secret = repo.create_api_key(session, tenant.id, pepper, "t")
        dataset = repo.create_dataset(session, tenant.id, name="d", n_labels=4)
        model = repo.create_model(session, tenant.id, dataset.id, name="m")
        tenant_id, model_id = tenant.id, model.id
        repo.transition_model(session, model_id, [ModelState.PENDING], ModelState.READY)
    store.put_bytes(f"tenants/{tenant_id}/models/{model_id}/model.zip", b"zip")
    job_id = finished_job(sessions, store, tenant_id, N_ITEMS, model_id=model_id)
    assert len(list_all(store, f"tenants/{tenant_id}/")) == 2 * N_ITEMS + 1

    with Client(stack.api_url, secret) as client:  # the Python client's delete methods
        job = client.job(job_id)
        assert (job.state, job.total) == ("succeeded", N_ITEMS)
        job_purge = client.delete_job(job_id)["id"]
        model_purge = client.delete_model(model_id)["id"]  # while the job's purge runs
        running = client.purge(job_purge)
        with pytest.raises(ApiError) as second:
            client.delete_job(job_id)
        assert (second.value.status, second.value.code) == (404, "job.not_found")
        with pytest.raises(ApiError) as read:
            client.job(job_id)
        assert read.value.status == 404
        shown = [_wait_done(client, job_purge), _wait_done(client, model_purge)]

    assert running["state"] == "pending"
    assert sum(p["objects_deleted"] for p in shown) >= 2 * N_ITEMS + 1
    assert list_all(store, f"tenants/{tenant_id}/jobs/") == []
    assert list_all(store, f"tenants/{tenant_id}/models/") == []
    with session_scope(sessions) as session:
        for table, column in ((Item, Item.job_id), (Chunk, Chunk.job_id), (Job, Job.id)):
            assert (
                session.scalar(select(func.count()).select_from(table).where(column == job_id)) == 0
            )
        assert session.get(Model, model_id) is None
    log = stack.log_path("worker1").read_text(errors="replace")
    assert "xmlx.purge" in log
    engine.dispose()


def list_all(store: ObjectStore, prefix: str) -> list[str]:
    found: list[str] = []
    while True:
        page = store.list_keys(prefix, limit=1000, start_after=found[-1] if found else None)
        found += page
        if len(page) < 1000:
            return found
