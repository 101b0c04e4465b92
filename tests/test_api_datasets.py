"""Uploads through presigned local URLs, and datasets built from real manifests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.idempotency import PENDING_LEASE_SECONDS, ReplayStore, fingerprint
from api.schemas import DatasetRequest
from tests.api_fixtures import (
    ApiUser,
    assert_problem,
    create_dataset,
    upload_dishes,
    upload_files,
)
from xmlcore.datasets import generate_dishes
from xmlx.embedded_s3 import EmbeddedS3
from xmlx.settings import Settings

MANIFEST = b"image,labels\na.png,x|y\nb.png,y\n"


def test_uploads_land_under_the_tenants_uploads(client: TestClient, api_user: ApiUser) -> None:
    answer = client.post(
        "/v1/uploads",
        json={"keys": ["a/b.png", "c.png"], "content_type": "image/png"},
        headers=api_user.headers,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["expires_in"] == 3600
    first = body["uploads"][0]
    assert first["key"] == "a/b.png" and first["method"] == "PUT"
    assert first["headers"] == {"Content-Type": "image/png"}
    assert f"/v1/files/tenants/{api_user.tenant_id}/uploads/a/b.png?" in first["url"]
    assert client.put(first["url"], content=b"png", headers=first["headers"]).status_code == 200
    store = client.app.state.xmlx.store  # type: ignore[attr-defined]
    assert store.get_bytes(f"tenants/{api_user.tenant_id}/uploads/a/b.png") == b"png"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../x.png", "'..'"),
        ("a//b.png", "empty segment"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "control character"),
        ("k" * 1025, "longer than"),
        ("é" * 600, "longer than"),  # 1,200 bytes of UTF-8 in 600 characters
    ],
)
def test_unsafe_upload_keys_are_refused(
    client: TestClient, api_user: ApiUser, key: str, reason: str
) -> None:
    answer = client.post("/v1/uploads", json={"keys": ["ok.png", key]}, headers=api_user.headers)
    body = assert_problem(answer, 422, "key.invalid")
    assert body["errors"] == [{"index": 1, "key": key[:200], "reason": body["errors"][0]["reason"]}]
    assert reason in body["errors"][0]["reason"]


def test_upload_request_limits(client: TestClient, api_user: ApiUser) -> None:
    for body in ({"keys": []}, {"keys": ["a"] * 1001}, {"keys": ["a"], "content_type": "x"}):
        assert_problem(
            client.post("/v1/uploads", json=body, headers=api_user.headers), 422, "request.invalid"
        )


def test_dataset_from_a_generated_manifest(
    client: TestClient, api_user: ApiUser, tmp_path: Path
) -> None:
    dataset = create_dataset(client, api_user, tmp_path)
    expected = generate_dishes("tiny").label_space
    assert dataset["n_images"] == expected.n_images == 60
    assert dataset["n_labels"] == expected.n_labels
    assert dataset["empty_rows"] == expected.empty_rows
    counts = dict(zip(expected.vocabulary, expected.label_counts().tolist(), strict=True))
    assert dataset["label_counts"] == counts
    assert dataset["images_prefix"] == "dishes/images/"
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=api_user.headers).json() == dataset
    store = client.app.state.xmlx.store  # type: ignore[attr-defined]
    copy = f"tenants/{api_user.tenant_id}/datasets/{dataset['id']}/manifest.csv"
    original = store.get_bytes(f"tenants/{api_user.tenant_id}/uploads/dishes/manifest.csv")
    assert store.get_bytes(copy) == original
    listing = client.get("/v1/datasets", params={"limit": 1}, headers=api_user.headers).json()
    assert [d["id"] for d in listing["items"]] == [dataset["id"]]
    assert listing["next_cursor"] is None


@pytest.mark.parametrize(
    ("manifest", "code", "line"),
    [
        (b"image,labels\na.png,x\na.png,y\n", "manifest.duplicate_image", 3),
        (b"picture,tags\na.png,x\n", "manifest.missing_column", 1),
        (b'{"image": "a.png", "labels": ["x"]}\n{"image": \n', "manifest.bad_json", 2),
        (b"image,labels\n", "manifest.empty", 1),
        (b"image,labels\n\xff\xfe,x\n", "manifest.not_utf8", None),
    ],
)
def test_bad_manifests_are_422_with_code_and_line(
    client: TestClient, api_user: ApiUser, manifest: bytes, code: str, line: int | None
) -> None:
    upload_files(client, api_user, {"m.csv": manifest}, "text/csv")
    body = {"name": "bad", "images_prefix": "imgs", "manifest_key": "m.csv"}
    answer = client.post("/v1/datasets", json=body, headers=api_user.headers)
    problem = assert_problem(answer, 422, code)
    if line is not None:
        assert problem["errors"] == [{"code": code, "line": line, "message": problem["detail"]}]
    listing = client.get("/v1/datasets", headers=api_user.headers).json()
    assert listing["items"] == []


def test_manifest_with_unsafe_image_keys_is_refused(client: TestClient, api_user: ApiUser) -> None:
    upload_files(client, api_user, {"m.csv": b"image,labels\nok.png,x\n../up.png,y\n"}, "text/csv")
    body = {"name": "bad", "images_prefix": "imgs", "manifest_key": "m.csv"}
    problem = assert_problem(
        client.post("/v1/datasets", json=body, headers=api_user.headers), 422, "key.invalid"
    )
    assert problem["errors"][0]["index"] == 1


def test_oversized_manifest_is_413(
    client: TestClient, api_user: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import inputs

    monkeypatch.setattr(inputs, "MAX_MANIFEST_BYTES", 20)
    upload_files(client, api_user, {"m.csv": b"image,labels\na.png,x\nb.png,y\n"}, "text/csv")
    body = {"name": "big", "images_prefix": "imgs", "manifest_key": "m.csv"}
    answer = client.post("/v1/datasets", json=body, headers=api_user.headers)
    assert_problem(answer, 413, "storage.too_large")


def test_missing_manifest_and_unsafe_prefixes(client: TestClient, api_user: ApiUser) -> None:
    def post(**body: str) -> object:
        full = {"name": "d", "images_prefix": "imgs", "manifest_key": "m.csv", **body}
        return client.post("/v1/datasets", json=full, headers=api_user.headers)

    assert_problem(post(), 422, "manifest.not_found")
    assert_problem(post(images_prefix="../other"), 422, "key.invalid")
    assert_problem(post(manifest_key="/abs.csv"), 422, "key.invalid")


def test_dataset_idempotency(client: TestClient, api_user: ApiUser, tmp_path: Path) -> None:
    manifest_key = upload_dishes(client, api_user, tmp_path)
    body = {"name": "dishes", "images_prefix": "dishes/images", "manifest_key": manifest_key}
    headers = {**api_user.headers, "Idempotency-Key": "ds-1"}
    first = client.post("/v1/datasets", json=body, headers=headers)
    again = client.post("/v1/datasets", json=dict(reversed(body.items())), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/datasets", json={**body, "name": "other"}, headers=headers)
    assert_problem(other, 422, "idempotency.conflict")
    listing = client.get("/v1/datasets", headers=api_user.headers).json()
    assert len(listing["items"]) == 1


def test_a_pending_idempotency_marker_expires_after_a_short_lease(
    client: TestClient, api_user: ApiUser, broker: redis.Redis, tmp_path: Path
) -> None:
    manifest_key = upload_dishes(client, api_user, tmp_path)
    body = {"name": "dishes", "images_prefix": "dishes/images", "manifest_key": manifest_key}
    headers = {**api_user.headers, "Idempotency-Key": "ds-dead"}
    fp = fingerprint("POST /v1/datasets", DatasetRequest(**body))
    # a process that took the key and died before finishing: the marker it left
    dead = ReplayStore(broker, "datasets", pending_seconds=0.5)
    assert dead.begin(api_user.tenant_id, "ds-dead", fp) is None
    assert_problem(
        client.post("/v1/datasets", json=body, headers=headers), 409, "idempotency.in_progress"
    )
    time.sleep(0.6)
    created = client.post("/v1/datasets", json=body, headers=headers)  # the retry goes ahead
    assert created.status_code == 201, created.text
    again = client.post("/v1/datasets", json=body, headers=headers)
    assert again.json()["id"] == created.json()["id"]
    assert broker.ttl(dead._key(api_user.tenant_id, "ds-dead")) > 3600  # the id stays 24 h


def test_the_apps_pending_marker_lives_one_short_lease(broker: redis.Redis) -> None:
    store = ReplayStore(broker, "datasets")
    assert store.begin("tenant-x", "k", "fp") is None
    assert 0 < broker.pttl(store._key("tenant-x", "k")) <= PENDING_LEASE_SECONDS * 1000
    assert PENDING_LEASE_SECONDS <= 300  # minutes, not the replay record's day


def test_datasets_are_tenant_scoped(
    client: TestClient,
    api_user: ApiUser,
    make_api_user: Callable[[], ApiUser],
    tmp_path: Path,
) -> None:
    dataset = create_dataset(client, api_user, tmp_path)
    stranger = make_api_user()
    answer = client.get(f"/v1/datasets/{dataset['id']}", headers=stranger.headers)
    assert_problem(answer, 404, "dataset.not_found")
    assert client.get("/v1/datasets", headers=stranger.headers).json()["items"] == []
    # The stranger cannot build a dataset from the first tenant's uploads either.
    body = {"name": "x", "images_prefix": "dishes/images", "manifest_key": "dishes/manifest.csv"}
    answer = client.post("/v1/datasets", json=body, headers=stranger.headers)
    assert_problem(answer, 422, "manifest.not_found")


def test_uploads_and_datasets_on_s3(
    make_api_settings: Callable[..., Settings],
    make_api_user: Callable[[], ApiUser],
    seaweedfs: EmbeddedS3,
) -> None:
    """With the S3 backend the URLs point at S3 itself; the API never sees the bytes."""
    settings = make_api_settings(
        storage_backend="s3",
        s3_endpoint_url=seaweedfs.endpoint_url,
        s3_access_key=seaweedfs.access_key,
        s3_secret_key=seaweedfs.secret_key,
        s3_region=seaweedfs.region,
        s3_bucket=f"api-{uuid.uuid4().hex[:12]}",
    )
    user = make_api_user()
    with TestClient(create_app(settings)) as client, httpx.Client() as s3:
        answer = client.post(
            "/v1/uploads",
            json={"keys": ["m.csv"], "content_type": "text/csv"},
            headers=user.headers,
        )
        target = answer.json()["uploads"][0]
        assert target["url"].startswith(seaweedfs.endpoint_url)
        put = s3.put(target["url"], content=MANIFEST, headers=target["headers"])
        assert put.status_code == 200, put.text
        body = {"name": "s3", "images_prefix": "imgs", "manifest_key": "m.csv"}
        dataset = client.post("/v1/datasets", json=body, headers=user.headers)
        assert dataset.status_code == 201, dataset.text
        assert (dataset.json()["n_images"], dataset.json()["n_labels"]) == (2, 2)
        assert client.get("/readyz").json()["checks"]["storage"]["ok"]
        assert_problem(client.get("/v1/files/x?expires=1&signature=a"), 404, "storage.not_local")
