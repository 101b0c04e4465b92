"""Queries: tenants and API keys, datasets and models, job and item listings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.kernel_fixtures import TEST_PEPPER
from xmlx import jobs
from xmlx import repository as repo
from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.errors import XmlxError
from xmlx.repository import InvalidCursorError
from xmlx.security import parse_api_key, request_hash


def test_api_keys_verify_only_with_the_right_secret(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    with session_scope(session_factory) as session:
        row, plaintext = repo.create_api_key(session, tenant_id, TEST_PEPPER, name="ci")
    assert plaintext.startswith("xmlx_") and parse_api_key(plaintext) == row.prefix
    assert plaintext not in row.key_hash
    with session_scope(session_factory) as session:
        found = repo.verify_api_key(session, plaintext, TEST_PEPPER)
        assert found is not None and found.tenant_id == tenant_id
        assert found.last_used_at is not None
        assert repo.verify_api_key(session, plaintext, "another pepper") is None
        tampered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
        assert repo.verify_api_key(session, tampered, TEST_PEPPER) is None
        assert repo.verify_api_key(session, "garbage", TEST_PEPPER) is None
    with session_scope(session_factory) as session:
        assert repo.revoke_api_key(session, tenant_id, row.id)
        assert not repo.revoke_api_key(session, tenant_id, row.id)
        assert repo.verify_api_key(session, plaintext, TEST_PEPPER) is None


def test_request_hash_is_stable() -> None:
    assert request_hash(b'{"a":1}') == request_hash(b'{"a":1}') != request_hash(b'{"a":2}')


def test_datasets_and_models_are_tenant_scoped(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    with session_scope(session_factory) as session:
        dataset = repo.create_dataset(
            session, tenant_id, name="dishes", n_images=3, label_counts={"salt": 2}
        )
        model = repo.create_model(session, tenant_id, dataset.id, params={"k": 16})
        other = repo.create_tenant(session, f"other-{dataset.id}").id
    assert dataset.storage_prefix == f"tenants/{tenant_id}/datasets/{dataset.id}/"
    assert dataset.manifest_key.endswith("/manifest.csv")
    with session_scope(session_factory) as session:
        assert repo.get_dataset(session, tenant_id, dataset.id) is not None
        assert repo.get_dataset(session, other, dataset.id) is None
        assert repo.get_model(session, other, model.id) is None
        loaded = repo.get_model(session, tenant_id, model.id)
        assert loaded is not None and loaded.params == {"k": 16} and loaded.state == "pending"
        assert [d.id for d in repo.list_datasets(session, tenant_id).rows] == [dataset.id]


def test_model_state_moves_by_compare_and_set(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    with session_scope(session_factory) as session:
        dataset = repo.create_dataset(session, tenant_id)
        model = repo.create_model(session, tenant_id, dataset.id)
    with session_scope(session_factory) as session:
        assert repo.transition_model(session, model.id, ["pending"], "training")
        assert not repo.transition_model(session, model.id, ["pending"], "training")
        assert repo.transition_model(
            session, model.id, ["training"], "ready",
            artifact_key="tenants/x/models/y/model.keras", metrics={"p@1": 0.5},
        )  # fmt: skip
    with session_scope(session_factory) as session:
        ready = repo.get_model(session, tenant_id, model.id)
        assert ready is not None and ready.state == "ready" and ready.metrics == {"p@1": 0.5}
        assert [m.id for m in repo.list_models(session, tenant_id, state="ready").rows] == [
            model.id
        ]


def _make_jobs(sessions: SessionFactory, tenant_id: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        created = jobs.create_job(
            sessions,
            tenant_id=tenant_id,
            kind="predict" if i % 2 else "explain",
            item_keys=[f"k{i}"],
        )
        ids.append(created.job.id)
    return ids


def test_jobs_page_newest_first_with_filters(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    ids = _make_jobs(session_factory, tenant_id, 5)
    seen, cursor = [], None
    with session_scope(session_factory) as session:
        while True:
            page = repo.list_jobs(session, tenant_id, limit=2, cursor=cursor)
            seen.extend(j.id for j in page.rows)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ids[::-1]
        predict = repo.list_jobs(session, tenant_id, kind="predict").rows
        assert [j.id for j in predict] == [ids[3], ids[1]]
        assert repo.list_jobs(session, tenant_id, state="running").rows == []
        with pytest.raises(InvalidCursorError):
            repo.list_jobs(session, tenant_id, cursor="not-a-cursor")
        with pytest.raises(XmlxError):
            repo.list_jobs(session, tenant_id, limit=0)


def test_jobs_created_in_the_same_instant_page_by_id(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    ids = _make_jobs(session_factory, tenant_id, 4)
    same = utcnow() - timedelta(days=1)
    with session_scope(session_factory) as session:
        for job_id in ids:
            job = repo.get_job(session, tenant_id, job_id)
            assert job is not None
            job.created_at = same
    with session_scope(session_factory) as session:
        first = repo.list_jobs(session, tenant_id, limit=3)
        rest = repo.list_jobs(session, tenant_id, limit=3, cursor=first.next_cursor)
        assert [j.id for j in first.rows + rest.rows] == sorted(ids, reverse=True)


def test_items_page_in_order_filtered_by_state(
    session_factory: SessionFactory, tenant_id: str
) -> None:
    keys = [f"img/{i:03d}.png" for i in range(25)]
    created = jobs.create_job(session_factory, tenant_id=tenant_id, kind="explain", item_keys=keys)
    for key in keys[::5]:
        jobs.record_item_failure(
            session_factory, created.job.id, key, code="image.corrupt", message="x"
        )
    with session_scope(session_factory) as session:
        collected, cursor = [], None
        while True:
            page = repo.list_items(session, tenant_id, created.job.id, limit=10, cursor=cursor)
            assert page is not None
            collected.extend(i.item_key for i in page.rows)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert collected == keys
        failed = repo.list_items(session, tenant_id, created.job.id, state="failed")
        assert failed is not None and [i.item_key for i in failed.rows] == keys[::5]
        assert {i.error_code for i in failed.rows} == {"image.corrupt"}
        other = repo.create_tenant(session, f"other-{created.job.id}").id
        assert repo.list_items(session, other, created.job.id) is None
        assert repo.get_item(session, other, created.job.id, keys[0]) is None
