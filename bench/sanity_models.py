"""Models whose evidence is known by construction, for checking the explainers themselves.

Each satisfies ``xmlcore.methods.ExplainableModel``, so ``make_explainer`` builds the
same explainers for them as for a trained two-step model. Each has ONE output (column
0) and an ``evidence`` mask: the only pixels that output depends on. An explainer that
attributes the output anywhere else is wrong, whatever the model "should" look at.

- ``RegionCNN``: a fixed (seeded, untrained) CNN that reads only one region of the
  image (a box snapped to the image's superpixels, ``box_region``):
  3x3 convolutions with zero-mean kernels (texture, not brightness), a constant 0/1
  mask zeroing every activation outside the region, a 1x1 convolution, global average
  pooling. The evidence is the region grown by the 3x3 kernel's one-pixel reach. The
  1x1 convolution after the mask makes the last convolution (Grad-CAM's layer) see
  only the region, so Grad-CAM is judged on the model, not on where we put a mask.
- ``MaskEnergy``: the score of one generated image computed from the ground-truth mask
  of one of its labels: the mean squared distance, inside the mask, of the pixels from
  the image's mean colour (what LIME, KernelSHAP and occlusion fill hidden parts with,
  so hiding any part of the object lowers the score and hiding anything else does
  nothing). No convolution, so Grad-CAM does not apply. ``snap_to_segments`` turns a
  label's mask into the superpixels that lie at least half inside it: a superpixel
  method can only point at whole superpixels, and with the mask as drawn a small
  object cut across by SLIC makes its best answer (the superpixel holding most of the
  object) a miss of the pointing game. Snapped, the check asks whether the explainer
  finds the evidence among its units; whether superpixels follow objects is the
  segmenter's question, which the trained-model scores answer.
- ``KerasExplainable``: any Keras model ``raw pixels -> (N, m)`` as an explainable
  model; the model-randomisation test wraps the trained model and its re-initialised
  copy with it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops
from scipy.ndimage import binary_dilation

from xmlcore.explain.device_sampling import PerturbingPredictor


class KerasExplainable:
    """``keras_model`` (float32 raw pixels ``(N, H, W, 3)`` -> ``(N, m)``) as an
    ``ExplainableModel``; perturbation methods run through ``PerturbingPredictor``."""

    def __init__(self, keras_model: keras.Model) -> None:
        self._model = keras_model
        self._predictor: PerturbingPredictor | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        shape = self._model.input_shape
        return int(shape[1]), int(shape[2])

    def device_predictor(self) -> PerturbingPredictor:
        if self._predictor is None:
            self._predictor = PerturbingPredictor(self._model)
        return self._predictor

    def keras_model(self) -> keras.Model:
        return self._model


class _ConstantMask(layers.Layer):
    """Multiplies ``(N, H, W, C)`` by a fixed ``(H, W)`` 0/1 mask."""

    def __init__(self, mask: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, dtype="float32")[None, :, :, None]

    def call(self, x: Any) -> Any:
        return x * ops.convert_to_tensor(self.mask)


class RegionCNN(KerasExplainable):
    """A fixed CNN reading only the pixels of ``region`` (bool ``(H, W)``); see the
    module docstring. ``box_region`` makes the usual one: a box snapped to an image's
    superpixels."""

    def __init__(self, region: np.ndarray, *, seed: int = 0) -> None:
        area = np.asarray(region, dtype=bool)
        if area.ndim != 2 or not area.any():
            raise ValueError("the region must be a non-empty (H, W) bool array")
        rng = np.random.default_rng(seed)
        kernels = rng.normal(size=(3, 3, 3, 8)).astype("float32")
        kernels -= kernels.mean(axis=(0, 1, 2), keepdims=True)  # zero mean: flat fill -> 0
        inputs = keras.Input((*area.shape, 3))
        x = layers.Rescaling(1 / 255.0)(inputs)
        conv = layers.Conv2D(8, 3, padding="same", use_bias=False, name="texture")
        x = layers.Activation("relu")(conv(x))
        x = _ConstantMask(area, name="region")(x)
        mix = layers.Conv2D(4, 1, use_bias=False, activation="relu", name="mix")
        x = layers.GlobalAveragePooling2D()(mix(x))
        head = layers.Dense(1, use_bias=False, name="score")
        model = keras.Model(inputs, head(x), name="region_cnn")
        conv.set_weights([kernels])
        mix.set_weights([np.abs(rng.normal(size=(1, 1, 8, 4))).astype("float32")])
        head.set_weights([np.full((4, 1), 100.0, dtype="float32")])  # O(1) outputs
        super().__init__(model)
        # The 3x3 kernels read one pixel beyond the region: that ring is evidence too.
        self.evidence = binary_dilation(area, np.ones((3, 3), dtype=bool))


def box_region(segments: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``box = (y0, y1, x0, x1)`` (end exclusive) snapped to ``segments`` (see
    ``snap_to_segments``)."""
    y0, y1, x0, x1 = box
    inside = np.zeros(np.asarray(segments).shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    if not inside.any():
        raise ValueError(f"box {box} is empty")
    return snap_to_segments(inside, segments)


class _MaskEnergy(layers.Layer):
    def __init__(self, mask: np.ndarray, colour: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        m = np.asarray(mask, dtype="float32")
        self.weights_map = (m / m.sum())[None, :, :]
        self.colour = (np.asarray(colour, dtype="float32") / 255.0)[None, None, None, :]

    def call(self, x: Any) -> Any:
        distance = ops.sum(ops.square(x / 255.0 - ops.convert_to_tensor(self.colour)), axis=-1)
        energy = ops.sum(distance * ops.convert_to_tensor(self.weights_map), axis=(1, 2))
        return ops.expand_dims(energy * 10.0, -1)


class MaskEnergy(KerasExplainable):
    """The planted score of ``image`` (uint8 ``(H, W, 3)``) from a label's ground-truth
    ``mask`` (bool ``(H, W)``); see the module docstring. One model per image: the
    mask and the mean colour are that image's."""

    def __init__(self, image: np.ndarray, mask: np.ndarray) -> None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != image.shape[:2] or not m.any():
            raise ValueError("the mask must be a non-empty (H, W) bool array of the image")
        colour = image.reshape(-1, 3).astype(np.float64).mean(axis=0)
        inputs = keras.Input((*image.shape[:2], 3))
        outputs = _MaskEnergy(m, colour, name="mask_energy")(inputs)
        super().__init__(keras.Model(inputs, outputs, name="mask_energy"))
        self.evidence = m


def snap_to_segments(mask: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The superpixels of ``segments`` that lie at least half inside ``mask`` (bool
    ``(H, W)``); the one most inside it when none does."""
    m = np.asarray(mask, dtype=bool)
    ids = np.asarray(segments).ravel()
    inside = np.bincount(ids, weights=m.ravel(), minlength=ids.max() + 1)
    share = inside / np.maximum(np.bincount(ids, minlength=ids.max() + 1), 1)
    chosen = np.flatnonzero(share >= 0.5) if (share >= 0.5).any() else [int(np.argmax(share))]
    return np.isin(segments, chosen)


def reinitialise_top(model: keras.Model, n_layers: int, *, seed: int = 0) -> keras.Model:
    """A copy of ``model`` with the kernels of its top ``n_layers`` trainable Dense or
    convolution layers (counted from the output, nested models included) drawn afresh
    from their own initialisers and their biases zeroed: the cascading randomisation
    of Adebayo et al. (2018), stopped at ``n_layers``. Fixed layers (a decoder that is
    not trained) keep their weights. Returns the copy and leaves ``model`` untouched."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    learned = [
        layer
        for layer in _walk(copy)
        if isinstance(layer, layers.Dense | layers.Conv2D | layers.DepthwiseConv2D)
        and layer.trainable
    ]
    for k, layer in enumerate(reversed(learned[-n_layers:] if n_layers else [])):
        initialiser = keras.initializers.get(layer.get_config().get("kernel_initializer"))
        if hasattr(initialiser, "seed"):
            initialiser.seed = seed + k
        fresh = [np.asarray(initialiser(w.shape)) if w.ndim > 1 else np.zeros(w.shape)
                 for w in layer.get_weights()]  # fmt: skip
        layer.set_weights(fresh)
    return copy


def _walk(model: Any) -> list[Any]:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_walk(layer))
    return out
