"""Imported pretrained weights: checked against the base's architecture, stored, fetched
into a worker's cache with a checksum, listed by /v1/capabilities, and required at
submit for weights="imagenet". A real weights file: MobileNetV2 (the smallest
pretrained base) with random weights at 32 px, about 9 MB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.api_fixtures import ApiUser, assert_problem, create_dataset
from workers.context import build_context
from workers.training import _use_imported_weights
from xmlcore.backbones import build_backbone, check_weights_file
from xmlcore.errors import ModelError
from xmlx.settings import Settings, get_settings
from xmlx.storage import ObjectStore, make_object_store
from xmlx.weights import (
    WEIGHTS_PREFIX,
    WeightsError,
    cached_weights_file,
    import_weights,
    record_key,
    weights_record,
)

BASE = "mobilenet_v2"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    backbone = build_backbone(BASE, "none", (32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_random.weights.h5"
    backbone.save_weights(str(path))
    return path, [np.asarray(w) for w in backbone.get_weights()]


def test_import_then_fetch_into_the_cache_loads_the_same_weights(
    object_store: ObjectStore, weights_file: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    path, original = weights_file
    object_store.ensure_bucket()
    assert weights_record(object_store, BASE) is None
    record = import_weights(object_store, BASE, path, check=check_weights_file)
    assert weights_record(object_store, BASE) == record
    assert record.size == path.stat().st_size and record.key.endswith(".weights.h5")
    cached = cached_weights_file(object_store, record, tmp_path / "cache")
    assert cached.read_bytes() == path.read_bytes()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no partial left
    loaded = build_backbone(BASE, str(cached), (48, 48, 3)).get_weights()  # any input size
    assert all(np.array_equal(a, b) for a, b in zip(original, loaded, strict=True))
    object_store.delete(record.key)  # second use: served from the cache, no download
    assert cached_weights_file(object_store, record, tmp_path / "cache") == cached


def test_a_file_of_another_architecture_is_refused_and_nothing_is_stored(
    object_store: ObjectStore, weights_file: tuple[Path, list[np.ndarray]]
) -> None:
    path, _ = weights_file
    object_store.ensure_bucket()
    with pytest.raises(ModelError) as err:
        import_weights(object_store, "vgg16", path, check=check_weights_file)
    assert err.value.code == "model.weights_mismatch"
    assert weights_record(object_store, "vgg16") is None
    assert object_store.list_keys(WEIGHTS_PREFIX) == []
    with pytest.raises(WeightsError) as bad:
        import_weights(object_store, "small", path, check=check_weights_file)
    assert bad.value.code == "config.base"


def test_a_corrupt_stored_file_is_refused_and_not_cached(
    object_store: ObjectStore, weights_file: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    path, _ = weights_file
    object_store.ensure_bucket()
    record = import_weights(object_store, BASE, path, check=check_weights_file)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    object_store.put_bytes(record.key, bytes(data))
    with pytest.raises(WeightsError) as err:
        cached_weights_file(object_store, record, tmp_path / "cache")
    assert err.value.code == "weights.corrupt"
    assert list((tmp_path / "cache" / BASE).iterdir()) == []


def test_cli_import_and_list(
    weights_file: tuple[Path, list[np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xmlx.cli import app

    monkeypatch.setenv("XMLX_STORAGE_BACKEND", "local")
    monkeypatch.setenv("XMLX_LOCAL_STORAGE_ROOT", str(tmp_path / "store"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        done = runner.invoke(app, ["weights", "import", str(weights_file[0]), "--base", BASE])
        assert done.exit_code == 0, done.output
        wrong = runner.invoke(app, ["weights", "import", str(weights_file[0]), "--base", "vgg16"])
        assert wrong.exit_code == 1 and "model.weights_mismatch" in wrong.output
        listed = runner.invoke(app, ["weights", "list"])
        assert "mobilenet_v2: mobilenet_v2_random.weights.h5" in listed.output
        assert "vgg16: none imported" in listed.output
    finally:
        get_settings.cache_clear()


def test_training_uses_the_imported_file_from_the_worker_cache(
    kernel_settings: Settings, weights_file: tuple[Path, list[np.ndarray]]
) -> None:
    ctx = build_context(kernel_settings)
    ctx.store.ensure_bucket()
    kwargs = {"base": BASE, "weights": "imagenet"}
    assert _use_imported_weights(ctx, dict(kwargs)) is None  # nothing imported: Keras cache
    record = import_weights(ctx.store, BASE, weights_file[0], check=check_weights_file)
    assert _use_imported_weights(ctx, kwargs) == record.sha256
    cached = Path(kwargs["weights"])
    assert cached.is_relative_to(kernel_settings.weights_cache_dir) and cached.is_file()


def test_submit_refuses_imagenet_without_imported_weights_and_capabilities_list_them(
    client: TestClient,
    api_user: ApiUser,
    api_settings: Settings,
    tmp_path: Path,
    weights_file: tuple[Path, list[np.ndarray]],
) -> None:
    dataset = create_dataset(client, api_user, tmp_path)

    def submit(base: str) -> object:
        training = {"base": base, "weights": "imagenet", "image_size": [32, 32]}
        body = {"dataset_id": dataset["id"], "training": training}
        return client.post("/v1/models", json=body, headers=api_user.headers)

    store = make_object_store(api_settings)
    store.delete(record_key(BASE))
    for base in ("vgg16", "small", BASE):
        problem = assert_problem(submit(base), 422, "config.weights_unavailable")
        assert "xmlx weights import" in str(problem["detail"]) or base == "small"
    caps = client.get("/v1/capabilities", headers=api_user.headers).json()
    by_name = {b["name"]: b for b in caps["bases"]}
    assert set(by_name) == {"small", "vgg16", "mobilenet_v2", "efficientnet_b0"}
    assert by_name[BASE]["imagenet_weights"] is None and not by_name["small"]["pretrained"]
    assert {m["name"] for m in caps["methods"]} >= {"lime", "occlusion", "gradcam"}
    record = import_weights(store, BASE, weights_file[0], check=check_weights_file)
    try:
        assert submit(BASE).status_code == 202  # type: ignore[attr-defined]
        caps = client.get("/v1/capabilities", headers=api_user.headers).json()
        shown = {b["name"]: b for b in caps["bases"]}[BASE]["imagenet_weights"]
        assert shown["sha256"] == record.sha256 and shown["size"] == record.size
        assert_problem(submit("vgg16"), 422, "config.weights_unavailable")
    finally:
        store.delete(record_key(BASE))
    assert client.get("/v1/capabilities").status_code == 401
