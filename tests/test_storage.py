"""Object storage on both adapters (local directory; S3 on a real SeaweedFS), and keys."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from tests.kernel_fixtures import TEST_SIGNING_SECRET, make_s3_store
from xmlx import keys
from xmlx.embedded_s3 import EmbeddedS3, free_port
from xmlx.keys import KeyValidationError
from xmlx.storage import (
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    sign_local_url,
    verify_local_url,
)

MIB = 1024 * 1024


def test_put_get_head_delete_round_trip(object_store: ObjectStore) -> None:
    key = "tenants/ten_abcd/uploads/a/b.png"
    assert object_store.head(key) is None and not object_store.exists(key)
    object_store.put_bytes(key, b"\x89PNG data", "image/png")
    assert object_store.get_bytes(key) == b"\x89PNG data"
    assert object_store.head(key) == 9 and object_store.exists(key)
    object_store.put_bytes(key, b"new")
    assert object_store.get_bytes(key) == b"new"
    object_store.delete(key)
    object_store.delete(key)  # deleting twice is fine
    assert object_store.head(key) is None


def test_missing_object_is_not_found(object_store: ObjectStore) -> None:
    with pytest.raises(StorageError) as info:
        object_store.get_bytes("no/such/key")
    assert info.value.code == "storage.not_found" and not info.value.transient


def test_size_is_checked_before_download(object_store: ObjectStore) -> None:
    object_store.put_bytes("big.bin", b"x" * 1000)
    assert object_store.get_bytes("big.bin", max_bytes=1000) == b"x" * 1000
    with pytest.raises(StorageError) as info:
        object_store.get_bytes("big.bin", max_bytes=999)
    assert info.value.code == "storage.too_large"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", "a/./b", "a\x00b", "a\\b"])
def test_unsafe_keys_are_refused(object_store: ObjectStore, key: str) -> None:
    with pytest.raises(StorageError) as info:
        object_store.put_bytes(key, b"x")
    assert info.value.code == "storage.bad_key"


def test_list_keys_pages_under_a_prefix(object_store: ObjectStore) -> None:
    names = [f"p/img{i:02d}.png" for i in range(7)]
    for name in [*names, "p2/other.png", "q/x.png"]:
        object_store.put_bytes(name, b"1")
    pages, start_after = [], None
    while True:
        page = object_store.list_keys("p/", limit=3, start_after=start_after)
        pages.append(page)
        if len(page) < 3:
            break
        start_after = page[-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [k for p in pages for k in p] == names
    assert object_store.list_keys("p", limit=100) == [*names, "p2/other.png"]
    assert object_store.list_keys("nothing/", limit=10) == []


def test_list_sizes_and_delete_many(object_store: ObjectStore) -> None:
    for i in range(5):
        object_store.put_bytes(f"d/{i}.bin", b"x" * (i + 1))
    object_store.put_bytes("e/keep.bin", b"k")
    sizes = object_store.list_sizes("d/", limit=3)
    assert sizes == [("d/0.bin", 1), ("d/1.bin", 2), ("d/2.bin", 3)]
    assert object_store.list_sizes("d/", start_after="d/2.bin") == [("d/3.bin", 4), ("d/4.bin", 5)]
    object_store.delete_many(["d/0.bin", "d/1.bin", "d/missing.bin", "d/4.bin"])
    assert object_store.list_keys("", limit=10) == ["d/2.bin", "d/3.bin", "e/keep.bin"]
    object_store.delete_many([])
    with pytest.raises(StorageError):
        object_store.delete_many([f"d/{i}" for i in range(1001)])  # S3's limit per call
    with pytest.raises(StorageError) as bad:
        object_store.delete_many(["d/2.bin", "../escape"])
    assert bad.value.code == "storage.bad_key" and object_store.exists("d/2.bin")


def test_put_file(object_store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model.keras"
    source.write_bytes(b"weights" * 100)
    object_store.put_file("m/model.keras", source)
    assert object_store.get_bytes("m/model.keras") == b"weights" * 100


def test_ensure_bucket_is_idempotent(object_store: ObjectStore) -> None:
    object_store.ensure_bucket()
    object_store.ensure_bucket()
    object_store.put_bytes("k", b"v")
    assert object_store.get_bytes("k") == b"v"


# S3 through real HTTP ------------------------------------------------------------------


@pytest.fixture
def s3_store(seaweedfs: EmbeddedS3) -> S3ObjectStore:
    return make_s3_store(seaweedfs, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)


def test_s3_presigned_get_and_put_over_http(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("shared/a.txt", b"hello", "text/plain")
    answer = httpx.get(s3_store.presigned_get_url("shared/a.txt", 60))
    assert answer.status_code == 200 and answer.content == b"hello"
    put_url = s3_store.presigned_put_url("shared/up.png", 60, "image/png")
    sent = httpx.put(put_url, content=b"png bytes", headers={"Content-Type": "image/png"})
    assert sent.status_code == 200
    assert s3_store.get_bytes("shared/up.png") == b"png bytes"


def test_s3_presigned_url_expires(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("shared/b.txt", b"soon gone")
    url = s3_store.presigned_get_url("shared/b.txt", 1)
    time.sleep(2.2)
    answer = httpx.get(url)
    assert answer.status_code == 403 and b"expired" in answer.content.lower()


def test_s3_large_object_goes_multipart(s3_store: S3ObjectStore) -> None:
    data = bytes(range(256)) * (11 * MIB // 256)
    s3_store.put_bytes("big/model.keras", data)
    etag = s3_store.client.head_object(Bucket=s3_store.bucket, Key="big/model.keras")["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts of at most 5 MiB
    assert s3_store.get_bytes("big/model.keras") == data


def test_s3_small_object_is_one_put_with_its_content_type(s3_store: S3ObjectStore) -> None:
    data = b"heatmap" * 1000
    s3_store.put_bytes("small/heatmap.png", data, "image/png")
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="small/heatmap.png")
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # not multipart
    assert head["ContentType"] == "image/png"
    assert s3_store.get_bytes("small/heatmap.png", max_bytes=len(data)) == data


def test_s3_oversized_get_is_refused_before_the_body(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("small/big.bin", b"y" * 4096)
    with pytest.raises(StorageError) as info:
        s3_store.get_bytes("small/big.bin", max_bytes=4095)
    assert info.value.code == "storage.too_large" and "4096 bytes" in info.value.message
    with pytest.raises(StorageError) as missing:
        s3_store.get_bytes("small/none.bin", max_bytes=10)
    assert missing.value.code == "storage.not_found"


def test_s3_unreachable_endpoint_is_transient() -> None:
    store = S3ObjectStore(
        "nobucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key="a",
        secret_key="b",
        max_attempts=1,
        connect_timeout=0.5,
    )
    with pytest.raises(StorageError) as info:
        store.get_bytes("k")
    assert info.value.code == "storage.unavailable" and info.value.transient


def test_s3_wrong_credentials_are_denied(seaweedfs: EmbeddedS3, s3_store: S3ObjectStore) -> None:
    intruder = S3ObjectStore(
        s3_store.bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region=seaweedfs.region,
        access_key=seaweedfs.access_key,
        secret_key="wrong",
        max_attempts=1,
    )
    with pytest.raises(StorageError) as info:
        intruder.get_bytes("k")
    assert info.value.code == "storage.denied"


# Local signed URLs ------------------------------------------------------------------


def _query(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    key = unquote(parts.path.removeprefix("/v1/files/"))
    return key, int(query["expires"][0]), query["signature"][0]


def test_local_presigned_urls_verify_and_expire(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, base_url="http://api.test/", secret=TEST_SIGNING_SECRET)
    url = store.presigned_get_url("tenants/ten_abcd/a b.png", 60)
    assert url.startswith("http://api.test/v1/files/tenants/ten_abcd/a%20b.png?")
    key, expires, signature = _query(url)
    verify_local_url(TEST_SIGNING_SECRET, "GET", key, expires, signature)
    for method, wrong_key, secret in [
        ("PUT", key, TEST_SIGNING_SECRET),
        ("GET", key + "x", TEST_SIGNING_SECRET),
        ("GET", key, "other secret"),
    ]:
        with pytest.raises(StorageError) as info:
            verify_local_url(secret, method, wrong_key, expires, signature)
        assert info.value.code == "storage.bad_signature"
    with pytest.raises(StorageError) as info:
        verify_local_url(TEST_SIGNING_SECRET, "GET", key, expires, "é" * len(signature))
    assert info.value.code == "storage.bad_signature"
    with pytest.raises(StorageError) as info:
        verify_local_url(TEST_SIGNING_SECRET, "GET", key, expires, signature, now=expires + 1)
    assert info.value.code == "storage.url_expired"


def test_local_presigned_put_binds_the_content_type(tmp_path: Path) -> None:
    url = sign_local_url("http://a", "s", "PUT", "k.png", 60, content_type="image/png")
    key, expires, signature = _query(url.removeprefix("http://a"))
    verify_local_url("s", "PUT", key, expires, signature, content_type="image/png")
    with pytest.raises(StorageError):
        verify_local_url("s", "PUT", key, expires, signature, content_type="text/html")


def test_local_store_writes_atomically_and_hides_partials(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, base_url="http://a", secret="s")
    store.put_bytes("a/b", b"1")
    assert store.list_keys("", limit=10) == ["a/b"]
    assert list((tmp_path / ".partial").iterdir()) == []
    with pytest.raises(StorageError):
        store.put_bytes(".partial/x", b"1")
    with pytest.raises(StorageError):
        store.put_bytes("a/b/c", b"1")  # a/b is an object, not a folder


# Keys ------------------------------------------------------------------------------


def test_server_built_keys_follow_the_layout() -> None:
    item_key = "photos/dish 1.jpg"
    artifact = keys.item_artifact_key("ten_abcd", "job_0123", item_key, "heatmap.png")
    assert (
        artifact
        == f"tenants/ten_abcd/jobs/job_0123/items/{keys.item_key_hash(item_key)}/heatmap.png"
    )
    assert len(keys.item_key_hash(item_key)) == 16
    assert keys.dataset_image_key("ten_abcd", "ds_0123", "a/b.png") == (
        "tenants/ten_abcd/datasets/ds_0123/images/a/b.png"
    )
    assert keys.model_artifact_key("ten_abcd", "mdl_0123", "model.keras").endswith(
        "models/mdl_0123/model.keras"
    )
    assert keys.upload_key("ten_abcd", "x.png") == "tenants/ten_abcd/uploads/x.png"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("../x", "'..'"),
        ("a/./b", "'.'"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("é" * 513, "1024 bytes"),
    ],
)
def test_user_keys_are_validated(key: str, reason: str) -> None:
    with pytest.raises(KeyValidationError) as info:
        keys.validate_user_key(key)
    assert info.value.code == "key.invalid" and reason in info.value.message


def test_valid_user_keys_pass_unchanged() -> None:
    for key in ["a.png", "dir/sub/x y (1).JPG", "é" * 512, "..hidden/x"]:
        assert keys.validate_user_key(key) == key


def test_forged_ids_and_names_cannot_escape() -> None:
    with pytest.raises(KeyValidationError):
        keys.dataset_prefix("ten_abcd", "../other")
    with pytest.raises(KeyValidationError):
        keys.item_artifact_key("ten_abcd", "job_0123", "k", "../../x.png")
