"""Perturbation sampling for superpixel explainers: masks, fills, packed forward passes.

The cost of LIME is its forward passes, so everything here is built to keep the model
busy: perturbed images are made by indexing the segment map with the mask matrix
(``masks[:, segments]`` -> ``(S, H, W)`` bool, then one ``copyto`` in uint8; no Python
loop per sample, no float copy of an image), and the samples of several images are
packed into the same fixed-size forward batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xmlcore.errors import ExplainError

Fill = str | int | tuple[int, int, int]
"""``"mean"`` (each hidden segment takes its mean colour, as ``lime``'s
``hide_color=None``), one grey level, or an ``(r, g, b)`` colour."""


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
    return np.broadcast_to(colour.astype(np.uint8), image.shape)


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
    keep = masks.astype(bool)[:, segments]
    np.copyto(out, fill)
    np.copyto(out, image, where=keep[..., None])


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

    def result(self) -> np.ndarray:
        return np.concatenate(self.outputs, axis=0)


def predict_outputs(
    predict_fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, columns: np.ndarray | None
) -> np.ndarray:
    """Call the model on one batch; returns float64 ``(n, m)`` (or only ``columns``)."""
    out = np.asarray(predict_fn(batch))
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise ExplainError(
            "explain.bad_predict_fn",
            f"predict_fn returned shape {out.shape} for a batch of {len(batch)} images",
        )
    if columns is not None:
        out = out[:, columns]
    return out.astype(np.float64)


def run_requests(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    requests: Sequence[SampleRequest],
    batch_size: int,
    columns: np.ndarray | None = None,
) -> None:
    """Answer every request with forward batches of exactly ``batch_size`` (the last one
    shorter), packing the samples of consecutive images together.

    Memory stays at one batch of perturbed images; outputs go back to
    ``request.outputs`` in row order.
    """
    if not requests:
        return
    buf = np.empty((batch_size, *requests[0].image.shape), dtype=np.uint8)
    pending: list[tuple[SampleRequest, int, int]] = []
    pos = 0
    for req in requests:
        row = 0
        while row < len(req.masks):
            take = min(batch_size - pos, len(req.masks) - row)
            perturb_into(
                buf[pos : pos + take],
                req.image,
                req.fill,
                req.segments,
                req.masks[row : row + take],
            )
            pending.append((req, pos, take))
            pos += take
            row += take
            if pos == batch_size:
                _flush(predict_fn, buf, pos, pending, columns)
                pending, pos = [], 0
    if pos:
        _flush(predict_fn, buf, pos, pending, columns)


def _flush(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    buf: np.ndarray,
    size: int,
    pending: list[tuple[SampleRequest, int, int]],
    columns: np.ndarray | None,
) -> None:
    out = predict_outputs(predict_fn, buf[:size], columns)
    for req, start, take in pending:
        req.outputs.append(out[start : start + take])
