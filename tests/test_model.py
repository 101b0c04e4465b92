"""The two-step model: training, prediction, explanation outputs, artifacts."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from xmlcore.artifacts import ModelMetadata
from xmlcore.datasets import generate_dishes
from xmlcore.errors import ConfigError, ModelError
from xmlcore.explain.backend_gradients import gradients
from xmlcore.model import TwoStepModel, top_k_labels, train_two_step


@pytest.fixture(scope="module")
def data():
    return generate_dishes("tiny", seed=0)


@pytest.fixture(scope="module")
def trained(data):
    calls: list[tuple[str, int]] = []
    model = train_two_step(
        data.images, data.label_space, layer_sizes=(8, 4), ae_params={"epochs": 10},
        epochs=2, batch_size=16, regressor_params={"head_units": (16,)}, model_id="m1",
        on_epoch=lambda stage, epoch, logs: calls.append((stage, epoch)),
    )  # fmt: skip
    return model, calls


def test_training_records_both_stages(trained, data) -> None:
    model, calls = trained
    assert {stage for stage, _ in calls} == {"autoencoder", "regressor"}
    assert ("regressor", 1) in calls
    meta = model.metadata
    assert meta.model_id == "m1" and meta.vocabulary == list(data.label_space.vocabulary)
    assert meta.layer_sizes == [8, 4] and meta.latent_dim == 4 and meta.image_size == [32, 32]
    assert meta.base == "small" and meta.preprocessing == "unit" and meta.keras_backend
    assert len(meta.history["regressor"]["loss"]) == 2 and meta.history["autoencoder"]["loss"]
    assert meta.metrics["regressor_epochs"] == 2.0
    assert meta.metrics["code_size_chosen"] == 0.0  # layer_sizes given: nothing chosen
    assert meta.regressor_params["label_loss"] == "mse"  # decoder-aware step 2 by default
    assert set(meta.versions) == {"keras", "numpy", "xmlcore"}


def test_predictions_chain_regressor_clip_and_decoder(trained, data) -> None:
    model, _ = trained
    images = data.images[:6]
    raw = model.regressor.predict(images)
    latent = model.predict_latent(images)
    np.testing.assert_array_equal(latent, np.maximum(raw, 0.0))
    scores = model.predict_scores(images)
    assert scores.shape == (6, data.label_space.n_labels) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, latent @ model.autoencoder.decoder_matrix(), rtol=1e-5)
    top = model.predict_top_k(images, k=3)
    assert len(top) == 6 and all(len(row) == 3 for row in top)
    best = scores.argmax(axis=1)
    assert [row[0][0] for row in top] == [model.vocabulary[j] for j in best]
    assert all(row[0][1] >= row[1][1] >= row[2][1] for row in top)


def test_outputs_fn_and_keras_model_agree(trained, data) -> None:
    model, _ = trained
    images = data.images[:5]
    outputs = model.outputs_fn(images)
    d = model.latent_dim
    assert outputs.shape == (5, d + model.n_labels)
    np.testing.assert_allclose(outputs[:, :d], model.predict_latent(images), rtol=1e-6)
    net = model.keras_model()
    assert net is model.keras_model()
    via_keras = np.asarray(net.predict(images.astype("float32"), verbose=0))
    np.testing.assert_allclose(via_keras, outputs, rtol=1e-4, atol=1e-5)


def test_device_predictor_gives_outputs_fn_from_uint8(trained, data) -> None:
    """The perturbation explainers' predict_fn (decoder in the graph) is outputs_fn."""
    model, _ = trained
    images = data.images[:5]
    predictor = model.device_predictor()
    assert predictor is model.device_predictor()
    np.testing.assert_allclose(predictor(images), model.outputs_fn(images), rtol=1e-4, atol=1e-5)


def test_keras_model_label_gradients_go_through_the_decoder(trained, data) -> None:
    """d score_j / d x == sum_i D[i, j] d latent_i / d x: the decoder is in the graph."""
    model, _ = trained
    x = data.images[:2].astype("float32")
    d, label = model.latent_dim, 0
    on_label = np.zeros((2, d + model.n_labels), dtype="float32")
    on_label[:, d + label] = 1.0
    on_latent = np.zeros_like(on_label)
    on_latent[:, :d] = model.autoencoder.decoder_matrix()[:, label]
    grad_label = gradients(model.keras_model(), x, on_label)
    np.testing.assert_allclose(
        grad_label, gradients(model.keras_model(), x, on_latent), rtol=1e-3, atol=1e-6
    )


def test_paper_pure_step_two_is_one_setting_away(data) -> None:
    model = train_two_step(
        data.images, data.label_space, layer_sizes=(8, 4), ae_params={"epochs": 3}, epochs=1,
        regressor_params={"head_units": (8,), "label_loss": "none"},
    )  # fmt: skip
    assert model.metadata.regressor_params["label_loss"] == "none"
    assert model.predict_scores(data.images[:2]).shape == (2, data.label_space.n_labels)


def test_top_k_rejects_bad_k() -> None:
    with pytest.raises(ConfigError):
        top_k_labels(np.zeros((1, 3)), ("a", "b", "c"), 4)
    with pytest.raises(ConfigError):
        top_k_labels(np.zeros((1, 3)), ("a", "b", "c"), 0)


def test_save_load_and_bytes_give_identical_predictions(trained, data, tmp_path) -> None:
    model, _ = trained
    images = data.images[:8]
    expected = model.outputs_fn(images)
    model.save(tmp_path / "artifact")
    assert sorted(p.name for p in (tmp_path / "artifact").iterdir()) == [
        "autoencoder.npz", "metadata.json", "model.keras",
    ]  # fmt: skip
    loaded = TwoStepModel.load(tmp_path / "artifact")
    np.testing.assert_array_equal(loaded.outputs_fn(images), expected)
    assert loaded.metadata == model.metadata and loaded.vocabulary == model.vocabulary
    restored = TwoStepModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(restored.outputs_fn(images), expected)
    assert restored.image_size == (32, 32)


def test_metadata_json_round_trip() -> None:
    meta = ModelMetadata(
        vocabulary=["a", "b"], layer_sizes=[2, 1], latent_dim=1, image_size=[32, 32],
        base="vgg16", weights="imagenet", preprocessing="caffe", autoencoder_loss="mse",
        metrics={"p@1": 0.5}, history={"regressor": {"loss": [1.0, 0.5]}},
    )  # fmt: skip
    assert ModelMetadata.from_json(meta.to_json()) == meta
    assert json.loads(meta.to_json())["created_at"].startswith("20")
    for bad in ("{", '{"format": "other/1"}', "[]"):
        with pytest.raises(ModelError) as err:
            ModelMetadata.from_json(bad)
        assert err.value.code == "model.corrupt_artifact"


def _corrupt(directory, name: str, content: bytes | None) -> None:
    path = directory / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("model.keras", None),
        ("model.keras", b"garbage"),
        ("autoencoder.npz", b"garbage"),
        ("metadata.json", b'{"format": "xmlcore.TwoStepModel/1"}'),
    ],
)
def test_broken_artifacts_are_corrupt_artifact_errors(trained, tmp_path, name, content) -> None:
    model, _ = trained
    model.save(tmp_path)
    _corrupt(tmp_path, name, content)
    with pytest.raises(ModelError) as err:
        TwoStepModel.load(tmp_path)
    assert err.value.code == "model.corrupt_artifact"


def test_wrong_vocabulary_is_refused(trained, tmp_path) -> None:
    model, _ = trained
    model.save(tmp_path)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["vocabulary"] = meta["vocabulary"][:-1]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError) as err:
        TwoStepModel.load(tmp_path)
    assert err.value.code == "model.corrupt_artifact"


def test_bad_zips_are_refused(trained) -> None:
    model, _ = trained
    with pytest.raises(ModelError) as err:
        TwoStepModel.from_bytes(b"not a zip")
    assert err.value.code == "model.corrupt_artifact"
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(model.to_bytes())) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../escape.txt", b"x")
    with pytest.raises(ModelError) as err:
        TwoStepModel.from_bytes(buffer.getvalue())
    assert err.value.code == "model.corrupt_artifact"


def test_hierarchy_reads_the_autoencoder_weights(trained, data) -> None:
    model, _ = trained
    tree = model.hierarchy(top_n=3)
    assert tree.layer_sizes == (8, 4)
    unit = tree.unit(1, 0)
    column = model.autoencoder.H_[0][:, 0]
    best = [data.label_space.vocabulary[j] for j in np.argsort(-column, kind="stable")[:3]]
    assert [name for name, _ in unit.members][:3] == best


def test_logistic_autoencoder_gives_probabilities_through_every_path(data, tmp_path) -> None:
    model = train_two_step(
        data.images, data.label_space, layer_sizes=(8, 4), ae_loss="bce",
        ae_params={"epochs": 5}, epochs=1, batch_size=16, regressor_params={"head_units": (8,)},
    )  # fmt: skip
    images = data.images[:4]
    scores = model.predict_scores(images)
    ae = model.autoencoder
    logits = model.predict_latent(images) @ ae.decoder_matrix() + ae.decoder_bias()
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    assert scores.min() > 0 and scores.max() < 1
    via_keras = np.asarray(model.keras_model().predict(images.astype("float32"), verbose=0))
    np.testing.assert_allclose(via_keras, model.outputs_fn(images), rtol=1e-4, atol=1e-5)
    loaded = TwoStepModel.load(model.save(tmp_path / "m"))
    assert loaded.metadata.autoencoder_loss == "bce"
    np.testing.assert_array_equal(loaded.predict_scores(images), scores)
