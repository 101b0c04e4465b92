"""Perturbation sampling for superpixel explainers: masks, fills, packed forward passes.

The cost of LIME is its forward passes, so everything here is built to keep the model
busy: perturbed images are made by indexing the segment map with the mask matrix
(``masks[:, segments]`` -> ``(S, H, W)`` bool, then one ``copyto`` in uint8; no Python
loop per sample, no float copy of an image), and the samples of several images are
packed into the same fixed-size forward batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from xmlcore.errors import ExplainError

Fill = str | int | tuple[int, int, int]
"""``"mean"`` (each hidden segment takes its mean colour, as ``lime``'s
``hide_color=None``), one grey level, or an ``(r, g, b)`` colour."""


def stack_images(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """A batch array from an array or a list of same-size images (clear error otherwise)."""
    if isinstance(images, np.ndarray):
        return images
    shapes = {np.shape(img) for img in images}
    if len(shapes) > 1:
        raise ExplainError(
            "explain.mismatched_sizes",
            f"all images of a batch must have the same size, got {sorted(shapes)}",
        )
    return np.stack([np.asarray(img) for img in images]) if images else np.asarray(images)


def fill_image(image: np.ndarray, segments: np.ndarray, fill: Fill) -> np.ndarray:
    """The image a hidden segment is replaced with, uint8 ``(H, W, 3)``.

    ``"mean"`` truncates the per-segment mean towards zero, exactly as ``lime`` does
    when it writes float means into its uint8 copy of the image.
    """
    if isinstance(fill, str):
        if fill != "mean":
            raise ExplainError("explain.bad_fill", f"unknown fill {fill!r}")
        k = int(segments.max()) + 1
        flat = segments.ravel()
        counts = np.bincount(flat, minlength=k).astype(np.float64)
        channels = [np.bincount(flat, image[..., c].ravel(), minlength=k) for c in range(3)]
        means = (np.stack(channels, axis=1) / np.maximum(counts, 1)[:, None]).astype(np.uint8)
        return means[segments]
    colour = np.broadcast_to(np.asarray(fill, dtype=np.int64), (3,))
    if colour.min() < 0 or colour.max() > 255:
        raise ExplainError("explain.bad_fill", f"fill colour must lie in 0..255, got {fill!r}")
    return np.broadcast_to(colour.astype(np.uint8), image.shape).copy()


def draw_masks(rng: np.random.RandomState, n: int, n_segments: int, *, first: bool) -> np.ndarray:
    """``n`` Bernoulli(0.5) rows over the segments, uint8 ``(n, K)``.

    Drawn with ``RandomState.randint(0, 2, n * K)`` as ``lime`` does, so the same
    seed gives ``lime``'s very masks. ``first`` makes row 0 all ones (the original).
    """
    rows = rng.randint(0, 2, n * n_segments).reshape(n, n_segments).astype(np.uint8)
    if first and n:
        rows[0] = 1
    return rows


def perturb_into(
    out: np.ndarray, image: np.ndarray, fill: np.ndarray, segments: np.ndarray, masks: np.ndarray
) -> None:
    """Write ``len(masks)`` perturbed copies of ``image`` into ``out`` (uint8, in place)."""
    pixel_segments = np.repeat(segments[..., None], 3, axis=-1).ravel()
    delta = image.astype(np.uint8) - np.asarray(fill, dtype=np.uint8)
    _perturb_flat(out.reshape(len(masks), -1), masks, pixel_segments, delta.ravel(), fill)


def _perturb_flat(
    out: np.ndarray, masks: np.ndarray, pixel_segments: np.ndarray, delta: np.ndarray, fill: Any
) -> None:
    """``out = fill + keep * (image - fill)`` in wrapping uint8 arithmetic, which is
    exactly ``image`` where kept and ``fill`` where hidden. Three contiguous passes
    (a column gather, a multiply, an add) beat a broadcast masked copy several-fold."""
    np.take(masks.astype(np.uint8, copy=False), pixel_segments, axis=1, out=out)
    np.multiply(out, delta, out=out)
    np.add(out, np.asarray(fill, dtype=np.uint8).reshape(-1), out=out)


def cosine_distances_to_ones(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each mask row to the all-ones row: ``1 - sqrt(k / K)``.

    ``k`` is the number of kept segments; an all-zero row is at distance 1, as in
    ``sklearn.metrics.pairwise_distances(..., metric="cosine")``.
    """
    kept = masks.sum(axis=1, dtype=np.float64)
    return 1.0 - np.sqrt(kept / masks.shape[1])


def exponential_kernel(distances: np.ndarray, kernel_width: float) -> np.ndarray:
    """``lime``'s similarity kernel ``sqrt(exp(-d^2 / w^2))``."""
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


@dataclass
class SampleRequest:
    """Forward passes wanted for one image: its masks; ``outputs`` is filled in."""

    image: np.ndarray
    fill: np.ndarray
    segments: np.ndarray
    masks: np.ndarray
    outputs: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pixel_segments = np.repeat(self.segments[..., None], 3, axis=-1).ravel()
        self._delta = (self.image - self.fill).ravel()
        self._fill = np.ascontiguousarray(self.fill).ravel()

    def perturb_rows(self, out: np.ndarray, start: int, stop: int) -> None:
        """Perturbed images for mask rows ``start:stop`` into ``out`` (uint8, in place)."""
        flat = out.reshape(stop - start, -1)
        _perturb_flat(flat, self.masks[start:stop], self._pixel_segments, self._delta, self._fill)

    def result(self) -> np.ndarray:
        return np.concatenate(self.outputs, axis=0)


Chunk = tuple[SampleRequest, int, int]
"""``(request, row in the batch, number of rows)``."""


def predict_outputs(
    predict_fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, columns: np.ndarray | None
) -> np.ndarray:
    """Call the model on one batch; returns float64 ``(n, m)`` (or only ``columns``)."""
    return checked_outputs(predict_fn(batch), len(batch), columns)


def checked_outputs(outputs: Any, n: int, columns: np.ndarray | None) -> np.ndarray:
    """A model's answer for ``n`` images as float64 ``(n, m)`` (or only ``columns``)."""
    out = np.asarray(outputs)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != n:
        raise ExplainError(
            "explain.bad_predict_fn",
            f"predict_fn returned shape {out.shape} for a batch of {n} images",
        )
    if columns is not None:
        out = out[:, columns]
    return out.astype(np.float64)


def run_requests(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    requests: Iterable[SampleRequest],
    batch_size: int,
    columns: np.ndarray | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> None:
    """Answer every request with forward batches of exactly ``batch_size`` (the last one
    shorter), packing the samples of consecutive images together.

    A helper thread builds the next batch while the model runs on the current one
    (numpy and the model both release the GIL), alternating between two buffers, so
    memory stays at two batches of perturbed images. Outputs go back to
    ``request.outputs`` in row order. ``requests`` may be a lazy iterable: it is
    consumed in the builder thread, so the work of making each request overlaps the
    model's work too (pass ``image_shape`` then, else the first request is made first).
    """
    if hasattr(predict_fn, "predict_perturbed"):
        _run_on_device(predict_fn, requests, batch_size, columns)
        return
    if image_shape is None:
        pending = iter(requests)
        first = next(pending, None)
        if first is None:
            return
        requests, image_shape = chain([first], pending), first.image.shape
    buffers = [np.empty((batch_size, *image_shape), np.uint8) for _ in range(2)]
    batches = _packed_batches(requests, buffers)
    with ThreadPoolExecutor(max_workers=1) as builder:
        upcoming = builder.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = builder.submit(next, batches, None)
            images, chunks = batch
            out = predict_outputs(predict_fn, images, columns)
            for req, start, take in chunks:
                req.outputs.append(out[start : start + take])


def _packed_batches(
    requests: Iterable[SampleRequest], buffers: list[np.ndarray]
) -> Iterator[tuple[np.ndarray, list[Chunk]]]:
    """Fill the buffers in turn with the requests' perturbed images, in order."""
    batch_size = len(buffers[0])
    turn, pos, chunks = 0, 0, []
    for req in requests:
        row = 0
        while row < len(req.masks):
            take = min(batch_size - pos, len(req.masks) - row)
            req.perturb_rows(buffers[turn][pos : pos + take], row, row + take)
            chunks.append((req, pos, take))
            pos, row = pos + take, row + take
            if pos == batch_size:
                yield buffers[turn], chunks
                turn, pos, chunks = 1 - turn, 0, []
    if pos:
        yield buffers[turn][:pos], chunks


def _run_on_device(
    predictor: Any,
    requests: Iterable[SampleRequest],
    batch_size: int,
    columns: np.ndarray | None,
) -> None:
    """``run_requests`` for a predictor that builds the perturbed images itself
    (``device_sampling.PerturbingPredictor``): batches carry masks, not pixels. The
    requests are made (segmented) and the batches assembled in a helper thread while
    the device works. With ``submit_perturbed`` (asynchronous on JAX), batch ``i + 1``
    is dispatched before batch ``i``'s outputs are read: one batch at most is read
    late, and the device does not wait for the host between batches. Every batch is
    padded to ``batch_size`` rows, so the short last one compiles nothing new."""
    submit = getattr(predictor, "submit_perturbed", None)
    if not getattr(predictor, "asynchronous", True):
        submit = None
    late: tuple[Any, int, list[Chunk]] | None = None

    def deliver(pending: Any, n: int, chunks: list[Chunk]) -> None:
        out = checked_outputs(pending.result(), n, columns)
        for req, start, take in chunks:
            req.outputs.append(out[start : start + take])

    with ThreadPoolExecutor(max_workers=1) as builder:
        batches = _mask_batches(requests, batch_size)
        upcoming = builder.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = builder.submit(next, batches, None)
            stacked, masks, rows, chunks = batch
            if submit is None:
                answered = _Answered(predictor.predict_perturbed(*stacked, masks, rows))
                deliver(answered, len(masks), chunks)
                continue
            pending = submit(*stacked, masks, rows, pad_to=batch_size)
            if late is not None:
                deliver(*late)
            late = (pending, len(masks), chunks)
        if late is not None:
            deliver(*late)


class _Answered:
    """The outputs of a predictor without ``submit_perturbed``, read like a pending batch."""

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs

    def result(self) -> np.ndarray:
        return self.outputs


Stacked = tuple[np.ndarray, np.ndarray, np.ndarray]
"""The distinct images of a batch, their fills and segment maps, stacked."""


def _mask_batches(
    requests: Iterable[SampleRequest], batch_size: int
) -> Iterator[tuple[Stacked, np.ndarray, np.ndarray, list[Chunk]]]:
    """Like ``_packed_batches``, as (the distinct requests' images, fills and segments
    stacked, masks, row -> request, chunks). Stacked here, in the builder thread, so
    the dispatching thread does no per-batch copying."""
    group: list[SampleRequest] = []
    parts: list[tuple[np.ndarray, int]] = []
    chunks: list[Chunk] = []
    pos = 0

    def flush() -> tuple[Stacked, np.ndarray, np.ndarray, list[Chunk]]:
        width = max(m.shape[1] for m, _ in parts)
        masks = np.zeros((pos, width), np.uint8)
        rows = np.empty(pos, np.int32)
        start = 0
        for m, g in parts:
            masks[start : start + len(m), : m.shape[1]] = m
            rows[start : start + len(m)] = g
            start += len(m)
        stacked = (
            np.stack([req.image for req in group]),
            np.stack([req.fill for req in group]),
            np.stack([req.segments for req in group]),
        )
        return stacked, masks, rows, chunks

    for req in requests:
        row = 0
        while row < len(req.masks):
            if not group or group[-1] is not req:
                group.append(req)
            take = min(batch_size - pos, len(req.masks) - row)
            parts.append((req.masks[row : row + take], len(group) - 1))
            chunks.append((req, pos, take))
            pos, row = pos + take, row + take
            if pos == batch_size:
                yield flush()
                group, parts, chunks, pos = [], [], [], 0
    if pos:
        yield flush()
