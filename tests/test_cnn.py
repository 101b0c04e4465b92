"""The image model: backbones, weights loading, fine-tuning, input pipeline, regressor."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from xmlcore import backbones
from xmlcore.backbones import PixelPreprocessing, build_backbone, conv_layers, set_fine_tuning
from xmlcore.cnn import ImageBatches, LatentLabelRegressor
from xmlcore.errors import ConfigError, ImageError, ModelError
from xmlcore.images import encode_png

SIZE = (32, 32)


def make_colour_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat-colour images with noise; targets are the mean red and green levels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-20, 21, size=(n, *SIZE, 3))
    images = np.clip(colours + noise, 0, 255).astype(np.uint8)
    targets = images[..., :2].mean(axis=(1, 2)) / 255.0 * np.array([1.0, 10.0])
    return images, targets.astype("float32")


def same_weights(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


# -- preprocessing and backbones -------------------------------------------------------


def test_preprocessing_matches_keras_applications() -> None:
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 4, 4, 3)).astype("float32")
    caffe = np.asarray(PixelPreprocessing("caffe")(pixels))
    tf_mode = np.asarray(PixelPreprocessing("tf")(pixels))
    vgg = keras.applications.vgg16.preprocess_input(pixels.copy())
    mobilenet = keras.applications.mobilenet_v2.preprocess_input(pixels.copy())
    np.testing.assert_allclose(caffe, vgg, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tf_mode, mobilenet, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        PixelPreprocessing("bgr")


def test_small_backbone_takes_raw_pixels() -> None:
    model = build_backbone("small", "none", (*SIZE, 3))
    assert model.layers[1].name == "preprocessing"
    out = model.predict(np.full((2, *SIZE, 3), 255.0, dtype="float32"), verbose=0)
    assert out.shape == (2, 4, 4, 64)


def test_bad_base_and_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet9000", "none", (32, 32, 3))
    assert err.value.code == "config.base"
    with pytest.raises(ConfigError) as err:
        build_backbone("vgg16", "none", (16, 16, 3))
    assert err.value.code == "config.image_size"
    with pytest.raises(ConfigError):
        build_backbone("small", "imagenet", (32, 32, 3))


def test_imagenet_weights_are_never_downloaded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(backbones, "keras_cache_dir", lambda: tmp_path)
    with pytest.raises(ModelError) as err:
        build_backbone("vgg16", "imagenet", (32, 32, 3))
    assert err.value.code == "model.weights_unavailable"
    expected = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert expected in err.value.message and str(tmp_path) in err.value.message


def test_imagenet_weights_load_from_the_local_keras_cache(tmp_path, monkeypatch) -> None:
    """A Keras-format (legacy h5, no preprocessing layer) file in the cache is used."""
    monkeypatch.setattr(backbones, "keras_cache_dir", lambda: tmp_path)
    app = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    name = backbones.BACKBONES["mobilenet_v2"].weights_file((32, 32, 3), 0.35)
    assert name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    with h5py.File(tmp_path / name, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    model = build_backbone("mobilenet_v2", "imagenet", (32, 32, 3), alpha=0.35)
    assert same_weights(app, model)


def test_weights_path_round_trip_and_mismatch(tmp_path) -> None:
    first = build_backbone("small", "none", (*SIZE, 3))
    path = tmp_path / "backbone.weights.h5"
    first.save_weights(path)
    second = build_backbone("small", str(path), (48, 48, 3))
    assert same_weights(first, second)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ModelError) as err:
        build_backbone("small", str(broken), (32, 32, 3))
    assert err.value.code == "model.weights_mismatch"
    with pytest.raises(ModelError) as err:
        build_backbone("small", str(tmp_path / "absent.weights.h5"), (32, 32, 3))
    assert err.value.code == "model.weights_unavailable"


def test_fine_tuning_unfreezes_only_the_top_conv_layers() -> None:
    vgg = build_backbone("vgg16", "none", (32, 32, 3))
    set_fine_tuning(vgg, 2, "vgg16")
    trainable = [layer.name for layer in conv_layers(vgg) if layer.trainable]
    assert trainable == ["block5_conv2", "block5_conv3"]
    assert len(vgg.trainable_weights) == 4
    set_fine_tuning(vgg, 0, "vgg16")
    assert vgg.trainable_weights == []
    set_fine_tuning(vgg, -1, "vgg16")
    assert len(vgg.trainable_weights) == 2 * len(conv_layers(vgg))
    small = build_backbone("small", "none", (*SIZE, 3))
    set_fine_tuning(small, 0, "small")
    assert len(small.trainable_weights) == 9  # 3 conv kernels + 3 BN (gamma, beta)


# -- the input pipeline -----------------------------------------------------------------


def test_image_batches_decode_and_batch() -> None:
    images, targets = make_colour_images(10)
    batches = ImageBatches(
        [encode_png(im) for im in images], targets, image_size=SIZE, batch_size=4, workers=2
    )
    assert len(batches) == 3
    shapes = [batches[i][0].shape for i in range(3)]
    assert shapes == [(4, *SIZE, 3), (4, *SIZE, 3), (2, *SIZE, 3)]
    pixels, y = batches[2]
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, images[8:].astype("float32"))
    np.testing.assert_array_equal(y, targets[8:])
    with pytest.raises(IndexError):
        batches[3]


def test_image_batches_loader_shuffle_and_errors() -> None:
    images, _ = make_colour_images(7)
    store = {f"k{i}": encode_png(im) for i, im in enumerate(images)}
    batches = ImageBatches(
        list(store), np.arange(7.0)[:, None], image_size=(16, 16), batch_size=3,
        loader=store.__getitem__, shuffle=True, seed=1,
    )  # fmt: skip
    seen = np.concatenate([batches[i][1][:, 0] for i in range(len(batches))])
    assert sorted(seen) == list(range(7)) and batches[0][0].shape == (3, 16, 16, 3)
    with pytest.raises(ConfigError):
        ImageBatches([b"x"], np.zeros((2, 1)), image_size=SIZE)
    with pytest.raises(ImageError):
        ImageBatches([b"not an image"], image_size=SIZE)[0]


# -- the regressor ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> tuple[LatentLabelRegressor, np.ndarray, np.ndarray]:
    images, targets = make_colour_images(160)
    reg = LatentLabelRegressor(
        image_size=SIZE, epochs=8, batch_size=16, head_units=(32,), dropout=0.0,
        learning_rate=3e-3, patience=8,
    )  # fmt: skip
    return reg.fit(images, targets), images, targets


def test_regressor_learns_with_an_identity_output(fitted) -> None:
    reg, images, targets = fitted
    assert reg.output_dim_ == 2 and reg.image_size_ == SIZE
    assert reg.model_.get_layer("head_output").activation.__name__ == "linear"
    assert set(reg.history_) == {"loss", "val_loss"} and len(reg.history_["loss"]) >= 2
    assert reg.history_["loss"][-1] < reg.history_["loss"][0]
    pred = reg.predict(images[:40])
    assert pred.shape == (40, 2) and pred.dtype == np.float32
    for unit in range(2):
        assert np.corrcoef(pred[:, unit], targets[:40, unit])[0, 1] > 0.8


def test_predict_accepts_floats_and_any_batch_size(fitted) -> None:
    reg, images, _ = fitted
    whole = reg.predict(images[:9])
    np.testing.assert_allclose(reg.predict(images[:9].astype("float32"), batch_size=4), whole,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        reg.predict(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    assert err.value.code == "config.image_size"


def test_regressor_fits_from_encoded_bytes() -> None:
    images, targets = make_colour_images(24, seed=3)
    data = ImageBatches([encode_png(im) for im in images], targets, image_size=SIZE, batch_size=8)
    reg = LatentLabelRegressor(image_size=SIZE, epochs=1, head_units=(8,), validation_split=0.0)
    reg.fit(data)
    assert reg.predict(data).shape == (24, 2)
    np.testing.assert_allclose(reg.predict(data), reg.predict(images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "images", "targets", "code"),
    [
        ({"epochs": 0}, np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 2)), "config.epochs"),
        ({}, np.zeros((4, 32, 32, 3), np.float32), np.zeros((4, 2)), "config.images"),
        ({}, np.zeros((4, 32, 32), np.uint8), np.zeros((4, 2)), "config.images"),
        ({}, np.zeros((4, 32, 32, 3), np.uint8), np.zeros((3, 2)), "config.shape"),
        ({}, np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4), "config.targets"),
        ({}, np.zeros((4, 32, 32, 3), np.uint8), np.full((4, 2), np.nan), "config.targets"),
        ({"image_size": (64, 64)}, np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 2)),
         "config.image_size"),
        ({"target_scaling": "max"}, np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 2)),
         "config.target_scaling"),
    ],
)  # fmt: skip
def test_bad_inputs_are_config_errors(kwargs, images, targets, code) -> None:
    params = {"image_size": SIZE, **kwargs}
    with pytest.raises(ConfigError) as err:
        LatentLabelRegressor(**params).fit(images, targets)
    assert err.value.code == code


def test_predict_before_fit_is_a_model_error() -> None:
    with pytest.raises(ModelError) as err:
        LatentLabelRegressor().predict(np.zeros((1, 64, 64, 3), np.uint8))
    assert err.value.code == "model.not_fitted"


# -- the decoder-aware label loss -----------------------------------------------------


def test_label_loss_trains_through_a_frozen_decoder_and_saves_the_plain_regressor() -> None:
    """Label loss and the auxiliary head (lower-layer codes) are training-only."""
    images, targets = make_colour_images(64, seed=5)
    decoder = np.array([[1.0, 0.5, 0.0], [0.0, 0.2, 0.1]], dtype="float32")
    labels = (targets @ decoder > np.median(targets @ decoder, axis=0)).astype("float32")
    reg = LatentLabelRegressor(
        image_size=SIZE, epochs=6, batch_size=16, head_units=(32,), dropout=0.0,
        learning_rate=3e-3, patience=6, label_loss="propensity_mse", label_weight=0.5,
        aux_weight=0.5, validation_split=0.0,
    )  # fmt: skip
    blue = images[..., 2].mean(axis=(1, 2))[:, None] / 255.0
    aux = np.concatenate([targets, blue], axis=1)  # a 3-unit "lower-layer code"
    reg.fit(images, targets, decoder=decoder, labels=labels, aux_targets=aux)
    assert reg.history_["loss"][-1] < reg.history_["loss"][0]
    assert reg.model_.output.shape[-1] == 2 and reg.predict(images[:5]).shape == (5, 2)
    assert not any(layer.name.startswith("train_") for layer in reg.model_.layers)
    assert not hasattr(reg, "_decoder") and reg.get_params()["label_loss"] == "propensity_mse"
    assert not hasattr(reg, "_features") and reg.get_params()["aux_weight"] == 0.5
    pred = reg.predict(images)
    assert np.corrcoef(pred[:, 1], targets[:, 1])[0, 1] > 0.5  # the latent stays anchored
    clone = LatentLabelRegressor.from_keras(reg.model_, reg.get_params())
    np.testing.assert_allclose(clone.predict(images[:4]), pred[:4], rtol=1e-5, atol=1e-6)


def test_label_loss_settings_are_checked() -> None:
    images, targets = make_colour_images(8)
    with pytest.raises(ConfigError) as err:
        LatentLabelRegressor(image_size=SIZE, label_loss="mse").fit(images, targets)
    assert err.value.code == "config.decoder"
    with pytest.raises(ConfigError) as err:
        reg = LatentLabelRegressor(image_size=SIZE, aux_weight=1.0)
        reg.fit(images, targets, aux_targets=np.zeros((7, 2)))
    assert err.value.code == "config.targets"
    for params in ({"label_loss": "hinge"}, {"label_loss": "mse", "label_weight": -1.0},
                   {"aux_weight": -1.0}):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            LatentLabelRegressor(image_size=SIZE, **params).fit(images, targets)
        assert err.value.code == "config.label_loss"
