"""Convolutional backbones that take raw 0..255 RGB pixels.

``build_backbone`` returns a flat functional ``keras.Model`` from raw pixels (float32,
``(N, H, W, 3)``) to the last convolutional feature map. The base's own ImageNet
preprocessing is a layer inside that graph, so callers (explainers, workers) never
need to know which base a model uses, and a gradient method sees one flat graph whose
last conv layer it can reach by name.

ImageNet weights are never downloaded: ``weights="imagenet"`` only looks for the file
Keras would have cached (``~/.keras/models/<file name>``) and fails with
``model.weights_unavailable`` when it is not there. Building the application with
``weights=None`` first and then calling ``load_weights`` on a local path guarantees
that no network call can start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from xmlcore.errors import ConfigError, ModelError

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_CONV_TYPES = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
_MOBILENET_ROWS = (96, 128, 160, 192, 224)


@keras.saving.register_keras_serializable(package="xmlcore")
class PixelPreprocessing(layers.Layer):
    """Maps raw 0..255 RGB pixels to what a base expects, inside the graph.

    ``mode``: ``"caffe"`` (VGG: RGB->BGR, subtract the ImageNet channel means),
    ``"tf"`` (MobileNet: scale to [-1, 1]), ``"unit"`` (scale to [0, 1]),
    ``"none"`` (EfficientNet normalises inside its own graph).
    """

    MODES = ("caffe", "tf", "unit", "none")

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ConfigError("config.preprocessing", f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        if self.mode == "caffe":
            bgr = ops.flip(x, axis=-1)
            return bgr - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype="float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one base: its preprocessing, its smallest input, its cached weights.

    ``build(x, shape, alpha)`` applies the base to the preprocessed tensor ``x`` and
    returns its last feature map; ``weights_file(shape, alpha)`` names the Keras cache
    file of its no-top ImageNet weights (None: the base has none).
    """

    preprocessing: str
    min_size: int
    build: Callable[[Any, tuple[int, int, int], float], Any]
    weights_file: Callable[[tuple[int, int, int], float], str | None]


def _build_vgg16(x: Any, shape: tuple[int, int, int], alpha: float) -> Any:
    app = keras.applications.VGG16(
        include_top=False, weights=None, input_tensor=x, input_shape=shape
    )
    return app.output


def _build_mobilenet_v2(x: Any, shape: tuple[int, int, int], alpha: float) -> Any:
    app = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_tensor=x, input_shape=shape, alpha=alpha
    )
    return app.output


def _build_efficientnet_b0(x: Any, shape: tuple[int, int, int], alpha: float) -> Any:
    app = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_tensor=x, input_shape=shape
    )
    return app.output


def _build_small(x: Any, shape: tuple[int, int, int], alpha: float) -> Any:
    """Three conv-BN-ReLU blocks trained from scratch: the CPU and test base.

    Batch normalisation makes this from-scratch base converge in a few epochs on CPU;
    momentum 0.9 so its moving statistics settle within the few hundred steps of a small run.
    """
    for block, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"small_conv{block}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"small_bn{block}")(x)
        x = layers.ReLU(name=f"small_relu{block}")(x)
        x = layers.MaxPooling2D(2, name=f"small_pool{block}")(x)
    return x


def _mobilenet_weights_file(shape: tuple[int, int, int], alpha: float) -> str:
    rows = shape[0] if shape[0] in _MOBILENET_ROWS else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "caffe", 32, _build_vgg16, lambda s, a: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "mobilenet_v2": BackboneSpec("tf", 32, _build_mobilenet_v2, _mobilenet_weights_file),
    "efficientnet_b0": BackboneSpec(
        "none", 32, _build_efficientnet_b0, lambda s, a: "efficientnetb0_notop.h5"
    ),
    "small": BackboneSpec("unit", 8, _build_small, lambda s, a: None),
}


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights (``<keras home>/models``)."""
    try:
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:
        home = os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def imagenet_weights_path(base: str, input_shape: tuple[int, int, int], alpha: float = 1.0) -> Path:
    """The local file ``weights="imagenet"`` loads, or ``model.weights_unavailable``."""
    name = _spec(base).weights_file(input_shape, alpha)
    if name is None:
        raise ConfigError(
            "config.weights", f"base {base!r} has no ImageNet weights; use weights='none'"
        )
    path = keras_cache_dir() / name
    if not path.is_file():
        raise ModelError(
            "model.weights_unavailable",
            f"ImageNet weights for {base!r} are not on this machine and are never downloaded. "
            f"Copy the Keras file {name!r} (from "
            "https://storage.googleapis.com/keras-applications/ or another machine's "
            f"~/.keras/models/) to {path}, or pass weights='/path/to/{name}'.",
        )
    return path


def build_backbone(
    base: str = "small",
    weights: str = "none",
    input_shape: tuple[int, int, int] = (64, 64, 3),
    *,
    alpha: float = 1.0,
) -> keras.Model:
    """Raw pixels ``(N, H, W, 3)`` 0..255 -> last conv feature map, preprocessing inside.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (the local Keras cache file,
    see ``imagenet_weights_path``) or a path to a ``.h5`` / ``.weights.h5`` file saved
    from the same base at any input size. ``alpha`` is MobileNetV2's width multiplier.
    """
    spec = _spec(base)
    shape = _check_shape(base, spec, input_shape)
    inputs = keras.Input(shape=shape, name="pixels", dtype="float32")
    x = PixelPreprocessing(spec.preprocessing, name="preprocessing")(inputs)
    backbone = keras.Model(inputs, spec.build(x, shape, alpha), name=f"{base}_backbone")
    path = _weights_path(base, weights, shape, alpha)
    if path is not None:
        _load_weights(backbone, path)
    return backbone


def check_weights_file(base: str, path: str | Path, *, alpha: float = 1.0) -> int:
    """Load the file at ``path`` into ``base``'s architecture, or raise
    ``model.weights_mismatch``; returns the number of weight values loaded. The base is
    built at a small input size: convolution weights do not depend on it."""
    size = max(_spec(base).min_size, 32)
    return int(build_backbone(base, str(path), (size, size, 3), alpha=alpha).count_params())


def conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's convolution layers, input to output."""
    return [layer for layer in model.layers if isinstance(layer, _CONV_TYPES)]


def set_fine_tuning(backbone: keras.Model, fine_tune_layers: int, base: str) -> None:
    """Freeze ``backbone`` except its last ``fine_tune_layers`` conv layers.

    ``0`` freezes everything (a fixed feature extractor), ``-1`` trains everything. The
    ``"small"`` base has no pretrained weights and is always fully trainable. Batch
    normalisation layers stay frozen whenever the base is partly frozen: updating their
    statistics on a small fine-tuning set is the classic way to ruin pretrained features.
    """
    if fine_tune_layers < -1:
        raise ConfigError("config.fine_tune_layers", "fine_tune_layers must be >= -1")
    backbone.trainable = True
    everything = base == "small" or fine_tune_layers == -1
    for layer in backbone.layers:
        layer.trainable = everything
    if everything:
        return
    convs = conv_layers(backbone)
    for layer in convs[len(convs) - min(fine_tune_layers, len(convs)) :]:
        layer.trainable = True


def _spec(base: str) -> BackboneSpec:
    if base not in BACKBONES:
        raise ConfigError(
            "config.base", f"unknown base {base!r}; choose one of {sorted(BACKBONES)}"
        )
    return BACKBONES[base]


def _check_shape(base: str, spec: BackboneSpec, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[2] != 3:
        raise ConfigError("config.image_size", f"input_shape must be (H, W, 3), got {shape}")
    h, w, c = (int(v) for v in shape)
    if min(h, w) < spec.min_size:
        raise ConfigError(
            "config.image_size", f"base {base!r} needs images of at least {spec.min_size} px"
        )
    return h, w, c


def _weights_path(
    base: str, weights: str, shape: tuple[int, int, int], alpha: float
) -> Path | None:
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        return imagenet_weights_path(base, shape, alpha)
    path = Path(weights)
    if not path.is_file():
        raise ModelError("model.weights_unavailable", f"weights file {str(path)!r} does not exist")
    if not path.name.endswith(".h5"):
        raise ConfigError("config.weights", "a weights file must be a .h5 or .weights.h5 file")
    return path


def _load_weights(backbone: keras.Model, path: Path) -> None:
    try:
        backbone.load_weights(str(path))
    except Exception as exc:
        raise ModelError(
            "model.weights_mismatch",
            f"cannot load {path.name!r} into this backbone (wrong base or file?): {exc}",
        ) from exc
