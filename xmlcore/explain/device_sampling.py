"""Perturbed images built on the accelerator, inside the model's compiled graph.

On a GPU the host-side path (``sampling.run_requests``) ships every perturbed image to
the device: at 224 px that is 150 KB per sample in uint8, 600 KB in float32, and the
host spends its time in ``np.take`` building them. Here only the ingredients travel:
per batch, the few distinct images with their fills and segment maps, plus one mask row
of ``K`` bytes per sample; the graph gathers ``keep = masks[row, segments[image]]`` and
picks ``image`` or ``fill`` per pixel, exactly the uint8 values the host path makes.

``PerturbingPredictor(model)`` is a plain ``predict_fn`` (uint8 ``(N, H, W, 3)`` ->
``(N, m)``) that also has ``predict_perturbed``; ``run_requests`` uses the latter when
it is there. Everything is Keras ops, so it compiles with XLA on JAX and TensorFlow and
runs on PyTorch too. Shapes are bucketed (batch and image count to powers of two,
segment count to a multiple of 64) so a run compiles a handful of graphs, not one per
batch; ``submit_perturbed(..., pad_to=)`` pads every batch of a run to one size.

``submit_perturbed`` starts a batch and returns a ``Pending`` to read later: on JAX the
call is dispatched asynchronously (a jitted ``stateless_call``; the host goes on
preparing the next batch while the device computes), so ``run_requests`` dispatches
batch ``i + 1`` before it reads batch ``i`` and the device never waits for the host
between batches. Other backends answer at once (``predict_on_batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from xmlcore.errors import ExplainError


@keras.saving.register_keras_serializable(package="xmlcore")
class PerturbOnDevice(layers.Layer):
    """``[images, fills, segments, masks, rows] -> perturbed`` uint8 ``(B, H, W, 3)``.

    ``images``/``fills`` uint8 ``(G, H, W, 3)``, ``segments`` int32 ``(G, H, W)``,
    ``masks`` uint8 ``(B, K)`` (1 keeps a segment), ``rows`` int32 ``(B,)``: which of
    the ``G`` images each sample perturbs.
    """

    def call(self, inputs: list[Any]) -> Any:
        images, fills, segments, masks, rows = inputs
        height, width = int(segments.shape[1]), int(segments.shape[2])
        segment_map = ops.reshape(ops.take(segments, rows, axis=0), (-1, height * width))
        keep = ops.take_along_axis(masks, segment_map, axis=1)
        keep = ops.reshape(keep, (-1, height, width, 1)) > 0
        return ops.where(keep, ops.take(images, rows, axis=0), ops.take(fills, rows, axis=0))

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple[Any, ...]:
        return (input_shape[3][0], *input_shape[0][1:])


@keras.saving.register_keras_serializable(package="xmlcore")
class OccludeOnDevice(layers.Layer):
    """``[images, fills, boxes, rows] -> occluded`` uint8 ``(B, H, W, 3)``: sample ``b``
    is ``images[rows[b]]`` with the box ``boxes[b] = (y0, y1, x0, x1)`` (end exclusive)
    taken from ``fills[rows[b]]``."""

    def call(self, inputs: list[Any]) -> Any:
        images, fills, boxes, rows = inputs
        height, width = int(images.shape[1]), int(images.shape[2])
        ys = ops.reshape(ops.arange(height, dtype="int32"), (1, height, 1))
        xs = ops.reshape(ops.arange(width, dtype="int32"), (1, 1, width))

        def edge(i: int) -> Any:
            return ops.reshape(boxes[:, i], (-1, 1, 1))

        inside = (ys >= edge(0)) & (ys < edge(1)) & (xs >= edge(2)) & (xs < edge(3))
        hidden = ops.expand_dims(inside, -1)
        return ops.where(hidden, ops.take(fills, rows, axis=0), ops.take(images, rows, axis=0))

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple[Any, ...]:
        return (input_shape[2][0], *input_shape[0][1:])


def bucket(n: int) -> int:
    """The power of two at or above ``n``: padded batches compile a handful of shapes."""
    return 1 << max(0, (n - 1).bit_length())


def pad_rows(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr`` with zero rows appended up to ``size`` rows (itself when already there)."""
    if len(arr) == size:
        return arr
    out = np.zeros((size, *arr.shape[1:]), arr.dtype)
    out[: len(arr)] = arr
    return out


class Pending:
    """Outputs of a batch started with ``submit_perturbed``; ``result()`` waits for them."""

    def __init__(self, read: Callable[[], np.ndarray]) -> None:
        self._read = read

    def result(self) -> np.ndarray:
        return self._read()


def _jax_forward(model: keras.Model) -> Callable[[list[Any]], Any]:
    """``inputs -> outputs`` of ``model`` compiled with ``jax.jit``, returning the device
    array without waiting for it (``predict_on_batch`` converts to numpy, which blocks).
    Variables are read at each call, so weights set later are used."""
    import jax

    def forward(trainable: list[Any], non_trainable: list[Any], inputs: list[Any]) -> Any:
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
        return outputs

    compiled = jax.jit(forward)

    def call(inputs: list[Any]) -> Any:
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return compiled(trainable, non_trainable, inputs)

    return call


class PerturbingPredictor:
    """A ``predict_fn`` over ``model`` (float32 pixels ``(N, H, W, 3)`` -> ``(N, m)``)
    whose perturbed samples are built on the device (see the module docstring).

    ``postprocess`` maps the model's float32 outputs (numpy) to the final outputs, for
    cheap host-side heads such as a decoder matrix. ``asynchronous=False`` keeps the
    earlier pipeline (each batch read before the next is built, padded to its own
    power of two): the baseline of ``bench/lime_overlap.py``.
    """

    segment_bucket = 64

    def __init__(
        self, model: keras.Model, postprocess: Any = None, *, asynchronous: bool = True
    ) -> None:
        shape = tuple(int(v) for v in model.input.shape[1:])
        if len(shape) != 3 or shape[-1] != 3:
            raise ExplainError("explain.bad_model", f"model input must be (H, W, 3), got {shape}")
        self.model = model
        self.postprocess = postprocess
        self.asynchronous = asynchronous
        h, w, _ = shape
        images = keras.Input((h, w, 3), dtype="uint8", name="images")
        fills = keras.Input((h, w, 3), dtype="uint8", name="fills")
        segments = keras.Input((h, w), dtype="int32", name="segments")
        masks = keras.Input((None,), dtype="uint8", name="masks")
        rows = keras.Input((), dtype="int32", name="rows")
        pixels = PerturbOnDevice(name="perturb")([images, fills, segments, masks, rows])
        outputs = model(ops.cast(pixels, "float32"))
        self.perturbing_model = keras.Model(
            [images, fills, segments, masks, rows], outputs, name="perturbing"
        )
        # Plain batches travel as uint8 too: a quarter of the float32 bytes (on an H200
        # the float32 copy held VGG16 to ~2,900 images/s of its ~17,000).
        raw = keras.Input((h, w, 3), dtype="uint8", name="pixels_uint8")
        self.uint8_model = keras.Model(raw, model(ops.cast(raw, "float32")), name="uint8_input")

    @cached_property
    def occluding_model(self) -> keras.Model:
        """``[images, fills, boxes, rows] -> outputs``, built on first use."""
        h, w, _ = (int(v) for v in self.model.input.shape[1:])
        images = keras.Input((h, w, 3), dtype="uint8", name="images")
        fills = keras.Input((h, w, 3), dtype="uint8", name="fills")
        boxes = keras.Input((4,), dtype="int32", name="boxes")
        rows = keras.Input((), dtype="int32", name="rows")
        pixels = OccludeOnDevice(name="occlude")([images, fills, boxes, rows])
        outputs = self.model(ops.cast(pixels, "float32"))
        return keras.Model([images, fills, boxes, rows], outputs, name="occluding")

    def predict_occluded(
        self, images: np.ndarray, fills: np.ndarray, boxes: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Outputs for ``len(rows)`` samples: ``images[rows[b]]`` with the box
        ``boxes[b] = (y0, y1, x0, x1)`` replaced by ``fills[rows[b]]``."""
        n, g = len(rows), bucket(len(images))
        inputs = [
            pad_rows(np.ascontiguousarray(images, np.uint8), g),
            pad_rows(np.ascontiguousarray(fills, np.uint8), g),
            pad_rows(np.ascontiguousarray(boxes, np.int32), bucket(n)),
            pad_rows(np.ascontiguousarray(rows, np.int32), bucket(n)),
        ]
        return self._finish(self.occluding_model.predict_on_batch(inputs), n)

    def _finish(self, out: Any, n: int) -> np.ndarray:
        arr = np.asarray(out, dtype=np.float32)[:n]
        return arr if self.postprocess is None else np.asarray(self.postprocess(arr))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Plain forward pass on uint8 images (padded to a power-of-two batch)."""
        batch = np.asarray(images)
        if batch.dtype != np.uint8:
            batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        out = self.uint8_model.predict_on_batch(pad_rows(batch, bucket(len(batch))))
        return self._finish(out, len(batch))

    def predict_perturbed(
        self,
        images: np.ndarray,
        fills: np.ndarray,
        segments: np.ndarray,
        masks: np.ndarray,
        rows: np.ndarray,
    ) -> np.ndarray:
        """Outputs for ``len(rows)`` samples: sample ``b`` is ``images[rows[b]]`` with
        the segments where ``masks[b]`` is 0 replaced by ``fills[rows[b]]``."""
        inputs = self._perturbed_inputs(images, fills, segments, masks, rows, None)
        return self._finish(self.perturbing_model.predict_on_batch(inputs), len(rows))

    def submit_perturbed(
        self,
        images: np.ndarray,
        fills: np.ndarray,
        segments: np.ndarray,
        masks: np.ndarray,
        rows: np.ndarray,
        *,
        pad_to: int | None = None,
    ) -> Pending:
        """``predict_perturbed`` started now and read later (see the module docstring).

        ``pad_to`` pads the samples to that many rows (at least ``len(rows)``): a run
        passes its batch size, so its short last batch compiles nothing new."""
        n = len(rows)
        if pad_to is not None and pad_to < n:
            raise ExplainError("explain.bad_batch", f"pad_to {pad_to} < {n} samples")
        inputs = self._perturbed_inputs(images, fills, segments, masks, rows, pad_to)
        if keras.backend.backend() != "jax":
            done = self._finish(self.perturbing_model.predict_on_batch(inputs), n)
            return Pending(lambda: done)
        out = self._jax_perturbing(inputs)  # dispatched, not waited for
        return Pending(lambda: self._finish(out, n))

    @cached_property
    def _jax_perturbing(self) -> Callable[[list[Any]], Any]:
        return _jax_forward(self.perturbing_model)

    def _perturbed_inputs(
        self,
        images: np.ndarray,
        fills: np.ndarray,
        segments: np.ndarray,
        masks: np.ndarray,
        rows: np.ndarray,
        pad_to: int | None,
    ) -> list[np.ndarray]:
        n, k = masks.shape
        size = bucket(max(n, pad_to or 0))
        k_pad = -(-max(k, 1) // self.segment_bucket) * self.segment_bucket
        padded_masks = np.zeros((size, k_pad), np.uint8)
        padded_masks[:n, :k] = masks
        g = bucket(len(images))
        return [
            pad_rows(np.ascontiguousarray(images, np.uint8), g),
            pad_rows(np.ascontiguousarray(fills, np.uint8), g),
            pad_rows(np.ascontiguousarray(segments, np.int32), g),
            padded_masks,
            pad_rows(np.ascontiguousarray(rows, np.int32), size),
        ]
