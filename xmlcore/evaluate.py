"""How good is an explanation? Faithfulness and localisation scores (seed 002).

Faithfulness ("perturbation analysis", Samek et al. 2017; deletion / insertion as in
RISE, Petsiuk et al. 2018): small blocks of pixels (or single pixels, or superpixels)
are ranked by mean attribution, most relevant first.

- ``deletion_auc``: replace them by the fill, most relevant first; the target output
  should collapse quickly. Lower is better.
- ``insertion_auc``: start from the all-fill image and put them back, most relevant
  first; the output should recover quickly. Higher is better.

Both curves are normalised as ``(f(x_s) - f(fill)) / (f(x) - f(fill))`` so every method
and image shares the endpoints 1 (original) and 0 (all fill); the AUC is then about the
order alone. A target whose output does not change between the original and the fill
has no defined curve (NaN). All steps of an image, and the steps of several images,
go through the model in one forward batch. Ties in the ranking (segment-level maps) are
broken at random with a fixed seed, not in raster order.

Localisation (the "bounding box analysis" of seed 002, with pixel masks):
``pointing_game`` (is the most relevant pixel inside the object?) and ``mass_in_mask``
(share of the positive attribution inside the object). ``random_attribution`` is the
chance baseline for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmlcore.errors import ExplainError
from xmlcore.explain.base import PredictFn, check_images
from xmlcore.explain.result import Explanation
from xmlcore.explain.sampling import Fill, fill_image, predict_outputs

BY = ("pixels", "blocks", "segments")


def deletion_auc(
    predict_fn: PredictFn,
    image: np.ndarray,
    heatmap: np.ndarray,
    column: int,
    *,
    steps: int = 20,
    fill: Fill = "mean",
    by: str = "blocks",
    block: int | None = None,
    segments: np.ndarray | None = None,
    max_fraction: float = 1.0,
) -> float:
    """Area under the normalised deletion curve of output ``column`` (lower is better).

    Options as ``perturbation_curves``; ``segments`` is one ``(H, W)`` map here.
    """
    x, y = perturbation_curves(
        "deletion", predict_fn, check_images(image), [heatmap], [column], steps=steps,
        fill=fill, by=by, block=block, segments=None if segments is None else [segments],
        max_fraction=max_fraction,
    )  # fmt: skip
    return curve_auc(x[0], y[0])


def insertion_auc(
    predict_fn: PredictFn,
    image: np.ndarray,
    heatmap: np.ndarray,
    column: int,
    *,
    steps: int = 20,
    fill: Fill = "mean",
    by: str = "blocks",
    block: int | None = None,
    segments: np.ndarray | None = None,
    max_fraction: float = 1.0,
) -> float:
    """Area under the normalised insertion curve of output ``column`` (higher is better)."""
    x, y = perturbation_curves(
        "insertion", predict_fn, check_images(image), [heatmap], [column], steps=steps,
        fill=fill, by=by, block=block, segments=None if segments is None else [segments],
        max_fraction=max_fraction,
    )  # fmt: skip
    return curve_auc(x[0], y[0])


def perturbation_curves(
    mode: str,
    predict_fn: PredictFn,
    images: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    columns: Sequence[int],
    *,
    steps: int = 20,
    fill: Fill = "mean",
    by: str = "blocks",
    block: int | None = None,
    segments: Sequence[np.ndarray] | None = None,
    max_fraction: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion or insertion curves of many images: ``(fractions, curves)``, both
    ``(n, steps + 1)``.

    Units changed together: ``by="blocks"`` (default) squares of ``block`` pixels (by
    default 1/16 of the shorter side: 4 px at 64 px, 14 px at 224 px), ``"pixels"``, or
    ``"segments"`` (one int map per image). Single pixels replaced by a flat colour make
    speckle that no photo has, and the model's answer to it says little about the
    explanation, hence blocks (Samek et al. perturb 9x9 regions). ``fractions`` is the
    share of units changed, from 0 to ``max_fraction`` (below 1 for the first part of
    the curve only: small objects); the AUC is taken over that range scaled to 0..1.
    """
    _check_curve_parameters(mode, by, steps, max_fraction, batch_size, segments)
    images = check_images(images)
    fractions, curves = [], []
    per_batch = max(1, batch_size // (steps + 2))
    for start in range(0, len(images), per_batch):
        batch, rows = [], []
        for i in range(start, min(len(images), start + per_batch)):
            seg = None if segments is None else np.asarray(segments[i])
            units = _units(images[i].shape[:2], by, block, seg)
            ranks, total = _ranks(np.asarray(heatmaps[i]), units, seed)
            counts = np.rint(np.linspace(0, max_fraction * total, steps + 1)).astype(np.int64)
            # One more row with every unit changed: the other end of the normalisation.
            batch.append(_perturbed(mode, images[i], fill, ranks, np.append(counts, total)))
            fractions.append(counts / total)
            rows.append(i)
        out = predict_outputs(predict_fn, np.concatenate(batch), None)
        out = out.reshape(len(rows), steps + 2, -1)
        for k, i in enumerate(rows):
            curves.append(_normalised(out[k, :, columns[i]], mode))
    return np.asarray(fractions), np.asarray(curves)


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the most relevant pixel lies inside ``mask``.

    When several pixels share the maximum (a superpixel map), the hit counts if at least
    half of them lie inside, so a tie never wins by raster order.
    """
    h, m = _check_pair(heatmap, mask)
    top = h == h.max()
    return bool(2 * np.count_nonzero(top & m) >= np.count_nonzero(top))


def mass_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive attribution that lies inside ``mask`` (0 if none is positive)."""
    h, m = _check_pair(heatmap, mask)
    positive = np.maximum(h.astype(np.float64), 0.0)
    total = positive.sum()
    return float(positive[m].sum() / total) if total > 0 else 0.0


def random_attribution(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The chance baseline: i.i.d. uniform(-1, 1) values, float32 ``shape``."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def evaluate_explanations(
    predict_fn: PredictFn,
    images: np.ndarray,
    explanations: Sequence[Explanation],
    masks: Sequence[np.ndarray],
    *,
    steps: int = 20,
    fill: Fill = "mean",
    by: str = "blocks",
    block: int | None = None,
    max_fraction: float = 1.0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Mean scores of ``explanations`` (one per ground-truth ``mask``, same order).

    Each explanation's ``image_index`` picks its image and ``target.column`` the output;
    curve options as ``perturbation_curves`` (``by`` pixels or blocks).
    Returns ``{"pointing_game", "mass_in_mask", "deletion_auc", "insertion_auc", "n",
    "n_undefined"}``; AUC means skip the undefined (flat) curves, counted in
    ``n_undefined``.
    """
    if len(explanations) != len(masks) or not explanations:
        raise ExplainError(
            "explain.bad_parameter",
            f"need one mask per explanation, got {len(masks)} for {len(explanations)}",
        )
    picked = np.stack([images[e.image_index] for e in explanations])
    heatmaps = [e.heatmap for e in explanations]
    columns = [e.target.column for e in explanations]
    aucs = {}
    for mode in ("deletion", "insertion"):
        x, y = perturbation_curves(
            mode, predict_fn, picked, heatmaps, columns, steps=steps, fill=fill, by=by,
            block=block, max_fraction=max_fraction, batch_size=batch_size,
        )  # fmt: skip
        aucs[mode] = np.array([curve_auc(xi, yi) for xi, yi in zip(x, y, strict=True)])
    pairs = list(zip(heatmaps, masks, strict=True))
    return {
        "pointing_game": float(np.mean([pointing_game(h, m) for h, m in pairs])),
        "mass_in_mask": float(np.mean([mass_in_mask(h, m) for h, m in pairs])),
        "deletion_auc": _nanmean(aucs["deletion"]),
        "insertion_auc": _nanmean(aucs["insertion"]),
        "n": len(explanations),
        "n_undefined": int(np.isnan(aucs["deletion"]).sum()),
    }


def _units(
    shape: tuple[int, ...], by: str, block: int | None, segments: np.ndarray | None
) -> np.ndarray:
    """``(H, W)`` int ids ``0..K-1`` of the units removed or inserted together."""
    h, w = shape
    if by == "pixels":
        return np.arange(h * w).reshape(h, w)
    if by == "blocks":
        block = block if block is not None else max(1, round(min(h, w) / 16))
        if block < 1:
            raise ExplainError("explain.bad_parameter", f"block must be >= 1, got {block}")
        cols = -(-w // block)
        return (np.arange(h)[:, None] // block) * cols + np.arange(w)[None, :] // block
    seg = np.asarray(segments)
    if seg.shape != (h, w) or not np.issubdtype(seg.dtype, np.integer):
        raise ExplainError("explain.bad_segments", f"segments must be integer {(h, w)}")
    return np.unique(seg, return_inverse=True)[1].reshape(h, w)


def _ranks(heatmap: np.ndarray, units: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """Per pixel, the position of its unit in the order (0 first), and the unit count.

    Units are ordered by mean attribution, largest first; ties at random (seeded).
    """
    h, _ = _check_pair(heatmap, np.zeros(units.shape, bool))
    flat = units.ravel()
    scores = np.bincount(flat, h.ravel().astype(np.float64)) / np.bincount(flat)
    order = np.lexsort((np.random.default_rng(seed).random(len(scores)), -scores))
    position = np.empty(len(scores), np.int64)
    position[order] = np.arange(len(scores))
    return position[units], len(scores)


def _perturbed(
    mode: str, image: np.ndarray, fill: Fill, ranks: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """``(steps + 1, H, W, 3)`` uint8: step ``s`` changes the ``counts[s]`` first units."""
    background = fill_image(image, np.zeros(image.shape[:2], np.int64), fill)
    changed = ranks[None] < counts[:, None, None]
    if mode == "deletion":
        return np.where(changed[..., None], background, image)
    return np.where(changed[..., None], image, background)


def _normalised(outputs: np.ndarray, mode: str) -> np.ndarray:
    """The curve (all rows but the last) scaled so the original is 1 and all-fill 0."""
    original, filled = outputs[0], outputs[-1]
    if mode == "insertion":
        original, filled = filled, original
    span = original - filled
    if abs(span) <= 1e-6 * max(1.0, abs(original)):
        return np.full(len(outputs) - 1, np.nan)
    return (outputs[:-1] - filled) / span


def _check_curve_parameters(
    mode: str,
    by: str,
    steps: int,
    max_fraction: float,
    batch_size: int,
    segments: Sequence[np.ndarray] | None,
) -> None:
    if mode not in ("deletion", "insertion") or by not in BY:
        raise ExplainError("explain.bad_parameter", f"unknown curve {mode!r} by {by!r}")
    if steps < 1 or batch_size < 1 or not 0 < max_fraction <= 1:
        raise ExplainError(
            "explain.bad_parameter",
            f"need steps, batch_size >= 1 and 0 < max_fraction <= 1: {steps}, {max_fraction}",
        )
    if by == "segments" and segments is None:
        raise ExplainError("explain.bad_segments", "by='segments' needs segments")


def curve_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area over ``x`` rescaled to 0..1 (``np.trapezoid`` is numpy 2 only)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / x[-1])


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _check_pair(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, m = np.asarray(heatmap), np.asarray(mask, dtype=bool)
    if h.ndim != 2 or h.shape != m.shape or not np.all(np.isfinite(h)):
        raise ExplainError(
            "explain.bad_heatmap", f"heatmap {h.shape} must be finite and match mask {m.shape}"
        )
    return h, m
