"""A dataset's images folder: recorded in its row since migration 0002, read from the
`dataset.json` the API used to write for rows created before (NULL columns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api_fixtures import ApiUser, create_dataset, make_ready_model
from xmlcore.labels import manifest_to_csv
from xmlx import keys
from xmlx import repository as repo
from xmlx.dataset_images import LEGACY_INFO_NAME, images_storage_prefix, images_user_prefix
from xmlx.db import SessionFactory, session_scope
from xmlx.models import Dataset
from xmlx.report import TruthCache
from xmlx.storage import ObjectStore, StorageError

LABELS = [f"label {i}" for i in range(10)]  # more than the 8 units make_ready_model asks


def make_legacy_dataset(
    sessions: SessionFactory, store: ObjectStore, tenant_id: str, info: object | None
) -> Dataset:
    """A dataset as the API made it before 0002: NULL columns, the folder in dataset.json
    (none when `info` is None), and its manifest copy."""
    with session_scope(sessions) as session:
        dataset = repo.create_dataset(
            session, tenant_id, name="old", n_images=2, n_labels=len(LABELS),
            label_counts=dict.fromkeys(LABELS, 1),
        )  # fmt: skip
    store.put_bytes(dataset.manifest_key, manifest_to_csv(["a.png", "b.png"], [LABELS, ["x"]]))
    if info is not None:
        store.put_bytes(dataset.storage_prefix + LEGACY_INFO_NAME, json.dumps(info).encode())
    assert dataset.image_prefix is None and dataset.images_prefix is None
    return dataset


def test_columns_win_over_a_stale_dataset_json(
    session_factory: SessionFactory, object_store: ObjectStore, tenant_id: str
) -> None:
    with session_scope(session_factory) as session:
        dataset = repo.create_dataset(
            session, tenant_id, image_prefix="tenants/t/uploads/new/", images_prefix="new/"
        )
    stale = {"image_prefix": "tenants/t/uploads/old/", "images_prefix": "old/"}
    object_store.put_bytes(dataset.storage_prefix + LEGACY_INFO_NAME, json.dumps(stale).encode())
    assert images_storage_prefix(object_store, dataset) == "tenants/t/uploads/new/"
    assert images_user_prefix(object_store, dataset) == "new/"


def test_a_row_without_columns_falls_back_to_its_dataset_json(
    session_factory: SessionFactory, object_store: ObjectStore, tenant_id: str
) -> None:
    info = {"image_prefix": "tenants/t/uploads/imgs/", "images_prefix": "imgs/"}
    dataset = make_legacy_dataset(session_factory, object_store, tenant_id, info)
    assert images_storage_prefix(object_store, dataset) == "tenants/t/uploads/imgs/"
    assert images_user_prefix(object_store, dataset) == "imgs/"


def test_a_row_without_columns_or_dataset_json(
    session_factory: SessionFactory, object_store: ObjectStore, tenant_id: str
) -> None:
    dataset = make_legacy_dataset(session_factory, object_store, tenant_id, None)
    assert images_user_prefix(object_store, dataset) is None
    with pytest.raises(StorageError) as info:
        images_storage_prefix(object_store, dataset)
    assert info.value.code == "storage.not_found"
    broken = make_legacy_dataset(session_factory, object_store, tenant_id, ["not", "an object"])
    with pytest.raises(ValueError, match="not a JSON object"):
        images_storage_prefix(object_store, broken)


def test_api_records_both_prefixes_in_the_row_and_no_dataset_json(
    client: TestClient, api_user: ApiUser, tmp_path: Path, session_factory: SessionFactory
) -> None:
    created = create_dataset(client, api_user, tmp_path)
    with session_scope(session_factory) as session:
        row = repo.get_dataset(session, api_user.tenant_id, created["id"])
    assert row is not None
    assert row.image_prefix == f"tenants/{api_user.tenant_id}/uploads/dishes/images/"
    assert row.images_prefix == created["images_prefix"] == "dishes/images/"
    store: ObjectStore = client.app.state.xmlx.store  # type: ignore[attr-defined]
    with pytest.raises(StorageError):
        store.get_bytes(row.storage_prefix + LEGACY_INFO_NAME)


def test_api_and_report_read_an_old_row_through_its_dataset_json(
    client: TestClient, api_user: ApiUser, session_factory: SessionFactory
) -> None:
    store: ObjectStore = client.app.state.xmlx.store  # type: ignore[attr-defined]
    prefix = keys.uploads_prefix(api_user.tenant_id, "old/imgs/")
    info = {"image_prefix": prefix, "images_prefix": "old/imgs/"}
    dataset = make_legacy_dataset(session_factory, store, api_user.tenant_id, info)
    shown = client.get(f"/v1/datasets/{dataset.id}", headers=api_user.headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["images_prefix"] == "old/imgs/"
    model_id = make_ready_model(client, api_user, session_factory, dataset.id)
    body = {"model_id": model_id, "dataset_id": dataset.id, "images": ["a.png"]}
    answer = client.post("/v1/predictions", json=body, headers=api_user.headers)
    assert answer.status_code == 202, answer.text
    with session_scope(session_factory) as session:
        training_id = repo.training_job_id(session, api_user.tenant_id, model_id)
        assert training_id is not None
        training = repo.get_job(session, api_user.tenant_id, training_id)
        job = repo.get_job(session, api_user.tenant_id, answer.json()["id"])
        assert training is not None and job is not None
        assert training.params["dataset"]["image_prefix"] == prefix
        assert job.params["image_prefix"] == prefix
        truth = TruthCache().for_job(session, store, job)
    assert truth is not None and truth["a.png"] == frozenset(LABELS)
