"""Gradient attribution methods (seed 002, group A): input x gradient, integrated
gradients, SmoothGrad and Grad-CAM.

Each takes a Keras model (raw 0..255 pixels in, outputs ``(N, m)`` out) and explains any
of its output columns. Work is counted in (image, target) pairs: every pair needs one
or more gradient rows (one for input x gradient, ``steps`` for integrated gradients,
``n`` for SmoothGrad), and the rows of many pairs are packed into one gradient call of
about ``batch_size`` rows with a one-hot output weight per row, so many targets of many
images share each backward pass.

Heatmaps are float32 ``(H, W)``: the attribution summed over the colour channels (pixel
methods) or the class activation map upsampled to the image (Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import keras
import numpy as np
from skimage.transform import resize

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.backend_gradients import gradients, iter_layers, layer_gradients
from xmlcore.explain.base import Explainer, Targets, check_images, normalize_targets
from xmlcore.explain.result import Explanation

Baseline = str | float | np.ndarray
_CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


class GradientExplainer(Explainer):
    """Shared driver: predictions, target resolution, pair packing, provenance.

    Subclasses say how many gradient rows a pair needs (``_rows_per_pair``), how to
    build them (``_build_rows``) and how to turn their gradients into heatmaps
    (``_reduce``).
    """

    method = "gradient"
    _rows_per_pair = 1

    def __init__(self, model: keras.Model, *, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ConfigError("config.bad_parameter", f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    def params(self) -> dict[str, Any]:
        """The method's parameters, JSON-friendly (recorded in provenance)."""
        return {"batch_size": self.batch_size}

    def explain(self, images: np.ndarray, targets: Targets) -> list[list[Explanation]]:
        x = check_images(images).astype(np.float32)
        outputs = predict(self.model, x, self.batch_size)
        rows = normalize_targets(targets, len(x), outputs.shape[1])
        pair_image = np.array([i for i, row in enumerate(rows) for _ in row], dtype=np.int64)
        pair_column = np.array([t.column for row in rows for t in row], dtype=np.int64)
        self._prepare(x)
        heatmaps = self._attribute(x, pair_image, pair_column, outputs.shape[1])
        provenance = {
            "method": self.method,
            "params": self.params(),
            "backend": keras.backend.backend(),
            "keras_version": keras.__version__,
        }
        result: list[list[Explanation]] = [[] for _ in rows]
        for p, (i, col) in enumerate(zip(pair_image, pair_column, strict=True)):
            target = rows[i][len(result[i])]
            result[i].append(
                Explanation(
                    image_index=int(i),
                    target=target,
                    method=self.method,
                    heatmap=heatmaps[p],
                    prediction=float(outputs[i, col]),
                    provenance=dict(provenance, **self._pair_provenance(int(i), int(col))),
                )
            )
        return result

    def _prepare(self, x: np.ndarray) -> None:
        """Per-call set-up that depends on the images (baselines); nothing by default."""

    def _pair_provenance(self, image: int, column: int) -> dict[str, Any]:
        return {}

    def _attribute(
        self, x: np.ndarray, pair_image: np.ndarray, pair_column: np.ndarray, n_outputs: int
    ) -> np.ndarray:
        per_pair = self._rows_per_pair
        pairs_per_chunk = max(1, self.batch_size // per_pair)
        maps = []
        for start in range(0, len(pair_image), pairs_per_chunk):
            images = pair_image[start : start + pairs_per_chunk]
            batch = self._build_rows(x, images)
            weights = np.zeros((len(batch), n_outputs), dtype=np.float32)
            columns = np.repeat(pair_column[start : start + pairs_per_chunk], per_pair)
            weights[np.arange(len(batch)), columns] = 1.0
            maps.append(self._reduce(x, images, batch, weights))
        return np.concatenate(maps).astype(np.float32)

    def _build_rows(self, x: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Gradient rows for the pairs of ``images``: ``(len(images) * per_pair, H, W, 3)``."""
        return x[images]

    def _reduce(
        self, x: np.ndarray, images: np.ndarray, batch: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """Differentiate ``batch`` and reduce to one ``(H, W)`` heatmap per pair."""
        raise NotImplementedError

    def _pair_gradients(self, batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Gradients grouped per pair: ``(pairs, per_pair, H, W, 3)``."""
        grads = gradients(self.model, batch, weights)
        return grads.reshape(-1, self._rows_per_pair, *grads.shape[1:])


class InputXGradient(GradientExplainer):
    """``x * df/dx`` summed over channels (Kindermans et al.; Shrikumar et al.)."""

    method = "input_x_gradient"

    def _reduce(
        self, x: np.ndarray, images: np.ndarray, batch: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        grads = self._pair_gradients(batch, weights)[:, 0]
        return np.sum(x[images] * grads, axis=-1)


class IntegratedGradients(GradientExplainer):
    """``(x - x') * mean over the path x' -> x of df/dx`` (Sundararajan et al., 2017).

    ``baseline``: ``"black"`` (0), ``"white"`` (255), ``"mean"`` (each image's mean
    colour), one grey level, or an array broadcastable to ``(H, W, 3)``. ``rule``:
    ``"midpoint"`` Riemann sum (``steps`` gradients at ``(k + 0.5) / steps``) or
    ``"trapezoid"`` (``steps`` points from 0 to 1 inclusive). Completeness: the
    attributions of a pair sum to about ``f(x) - f(x')``; both numbers are recorded in
    the provenance so callers can see the approximation error.
    """

    method = "integrated_gradients"

    def __init__(
        self,
        model: keras.Model,
        *,
        baseline: Baseline = "black",
        steps: int = 32,
        rule: str = "midpoint",
        batch_size: int = 64,
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        if rule not in ("midpoint", "trapezoid"):
            raise ConfigError("config.bad_parameter", f"rule must be midpoint or trapezoid: {rule}")
        if steps < (2 if rule == "trapezoid" else 1):
            raise ConfigError("config.bad_parameter", f"too few steps for {rule}: {steps}")
        self.baseline = baseline
        self.steps = steps
        self.rule = rule
        self._rows_per_pair = steps
        if rule == "midpoint":
            self._alphas = (np.arange(steps) + 0.5) / steps
            self._weights = np.full(steps, 1.0 / steps)
        else:
            self._alphas = np.linspace(0.0, 1.0, steps)
            self._weights = np.full(steps, 1.0 / (steps - 1))
            self._weights[[0, -1]] *= 0.5
        self._baselines = np.zeros((0,), dtype=np.float32)
        self._baseline_outputs = np.zeros((0, 0), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        baseline = self.baseline if isinstance(self.baseline, str | int | float) else "array"
        return {**super().params(), "baseline": baseline, "steps": self.steps, "rule": self.rule}

    def _prepare(self, x: np.ndarray) -> None:
        self._baselines = make_baselines(x, self.baseline)
        self._baseline_outputs = predict(self.model, self._baselines, self.batch_size)

    def _pair_provenance(self, image: int, column: int) -> dict[str, Any]:
        return {"baseline_prediction": float(self._baseline_outputs[image, column])}

    def _build_rows(self, x: np.ndarray, images: np.ndarray) -> np.ndarray:
        start = self._baselines[images][:, None]
        delta = (x[images] - self._baselines[images])[:, None]
        path = start + self._alphas.astype(np.float32)[None, :, None, None, None] * delta
        return path.reshape(-1, *x.shape[1:])

    def _reduce(
        self, x: np.ndarray, images: np.ndarray, batch: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        grads = self._pair_gradients(batch, weights)
        mean_grad = np.tensordot(self._weights.astype(np.float32), grads, axes=([0], [1]))
        return np.sum((x[images] - self._baselines[images]) * mean_grad, axis=-1)


class SmoothGrad(GradientExplainer):
    """The gradient averaged over ``n`` noisy copies of the image (Smilkov et al., 2017).

    ``noise_scale`` is the noise standard deviation as a fraction of the 0..255 range.
    ``aggregate``: ``"abs"`` (mean of |grad|), ``"square"`` (mean of grad^2) or ``"raw"``
    (mean gradient, signed); the heatmap sums the aggregate over channels. The noise of
    an image depends only on ``seed`` and the image's index, so every target of an image
    sees the same noisy copies whatever the batching.
    """

    method = "smoothgrad"
    _AGGREGATES: ClassVar[dict[str, Callable[[np.ndarray], np.ndarray]]] = {
        "abs": np.abs,
        "square": np.square,
        "raw": lambda g: g,
    }

    def __init__(
        self,
        model: keras.Model,
        *,
        noise_scale: float = 0.15,
        n: int = 25,
        aggregate: str = "abs",
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        if aggregate not in self._AGGREGATES:
            raise ConfigError("config.bad_parameter", f"unknown aggregate {aggregate!r}")
        if n < 1 or not noise_scale >= 0:
            raise ConfigError(
                "config.bad_parameter", f"need n >= 1 and noise_scale >= 0: {n}, {noise_scale}"
            )
        self.noise_scale = noise_scale
        self.n = n
        self.aggregate = aggregate
        self.seed = seed
        self._rows_per_pair = n

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "noise_scale": self.noise_scale,
            "n": self.n,
            "aggregate": self.aggregate,
            "seed": self.seed,
        }

    def _build_rows(self, x: np.ndarray, images: np.ndarray) -> np.ndarray:
        sigma = self.noise_scale * 255.0
        noisy = [
            x[i][None]
            + sigma
            * np.random.default_rng([self.seed, int(i)]).standard_normal(
                (self.n, *x.shape[1:]), dtype=np.float32
            )
            for i in images
        ]
        return np.concatenate(noisy)

    def _reduce(
        self, x: np.ndarray, images: np.ndarray, batch: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        grads = self._pair_gradients(batch, weights)
        return np.sum(self._AGGREGATES[self.aggregate](grads).mean(axis=1), axis=-1)


class GradCAM(GradientExplainer):
    """Class activation map of a convolution layer (Selvaraju et al., 2017).

    ``layer`` names the layer (looked up in nested models too); ``None`` takes the last
    convolution of the model. The map ``relu(sum_c mean_hw(dy/dA_c) * A_c)`` (``relu``
    optional) is upsampled bilinearly to the image size.
    """

    method = "gradcam"

    def __init__(
        self,
        model: keras.Model,
        *,
        layer: str | None = None,
        relu: bool = True,
        batch_size: int = 64,
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        self.layer = layer if layer is not None else last_conv_layer(model)
        self.relu = relu

    def params(self) -> dict[str, Any]:
        return {**super().params(), "layer": self.layer, "relu": self.relu}

    def _reduce(
        self, x: np.ndarray, images: np.ndarray, batch: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        acts, grads = layer_gradients(self.model, self.layer, batch, weights)
        if acts.ndim != 4:
            raise ExplainError(
                "explain.bad_layer",
                f"Grad-CAM needs an (N, h, w, c) layer output; {self.layer!r} gives {acts.shape}",
            )
        channel_weights = grads.mean(axis=(1, 2), keepdims=True)
        cams = np.sum(channel_weights * acts, axis=-1)
        if self.relu:
            cams = np.maximum(cams, 0.0)
        size = x.shape[1:3]
        return np.stack([resize(c, size, order=1, mode="edge", anti_aliasing=False) for c in cams])


def last_conv_layer(model: keras.Model) -> str:
    """Name of the last 2-D convolution in ``model`` (nested models included)."""
    names = [layer.name for layer in iter_layers(model) if isinstance(layer, _CONV_LAYERS)]
    if not names:
        raise ExplainError(
            "explain.no_conv_layer",
            "Grad-CAM found no convolution layer in the model; pass layer= explicitly",
        )
    return names[-1]


def make_baselines(x: np.ndarray, baseline: Baseline) -> np.ndarray:
    """Integrated-gradients reference images for a float batch ``x``: same shape, float32."""
    if isinstance(baseline, str):
        named = {"black": 0.0, "white": 255.0}
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
        if baseline not in named:
            raise ConfigError("config.bad_parameter", f"unknown baseline {baseline!r}")
        return np.full(x.shape, named[baseline], dtype=np.float32)
    try:
        return np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape).copy()
    except ValueError as exc:
        raise ConfigError(
            "config.bad_parameter", f"baseline does not broadcast to the images {x.shape[1:]}"
        ) from exc


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's outputs ``(N, m)`` float32 in inference mode, ``batch_size`` at a time."""
    chunks = []
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size], training=False)
        if isinstance(out, list | tuple):
            out = keras.ops.concatenate([keras.ops.reshape(o, (o.shape[0], -1)) for o in out], -1)
        chunks.append(np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32))
    outputs = np.concatenate(chunks)
    if outputs.ndim != 2:
        raise ExplainError("explain.bad_model", f"outputs must be (N, m), got {outputs.shape}")
    return outputs
