"""Faithfulness of every explanation of a batch, on request: deletion and insertion AUC.

The curves are ``xmlcore.evaluate``'s (the same code ``bench/explain_quality.py``
scores methods with): units of the image are ranked by the explanation, most relevant
first, then replaced by the fill (deletion; lower AUC is better) or put back onto the
all-fill image (insertion; higher is better), ``EVALUATION_STEPS`` steps after the
start, the output normalised so the original is 1 and the all-fill image 0.

What a unit is, per method:

- superpixel methods (LIME, KernelSHAP, occlusion over segments) rank the explanation's
  own superpixels by their weight: the curve removes exactly what the explanation
  scored;
- pixel-level maps (occlusion windows, gradients, Grad-CAM) rank square blocks of 1/16
  of the shorter side by their mean attribution. Single pixels make speckle no photo
  has; SLIC segments would make the score depend on a segmentation the method never
  saw. Blocks are what ``bench/explain_quality.py`` reports, so the numbers compare.

The fill is the image's mean colour for every method, so AUCs compare across methods.
Cost per image: per curve kind and target, ``EVALUATION_STEPS + 2`` forward passes
(``xmlcore.param_costs.evaluation_passes``), all images of a batch packed into forward
batches of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.evaluate import curve_auc, perturbation_curves
from xmlcore.explain.base import PredictFn
from xmlcore.explain.result import Explanation
from xmlcore.param_costs import EVALUATION_STEPS
from xmlcore.params import EVALUATIONS

AUC_NAMES = ("deletion_auc", "insertion_auc")
"""The scores' names, in results (``faithfulness``, ``metrics``) and job means."""


def score_faithfulness(
    predict_fn: PredictFn,
    images: np.ndarray,
    explained: Sequence[Sequence[Explanation]],
    evaluate: Sequence[str],
    *,
    batch_size: int = 256,
) -> list[list[dict[str, Any]]]:
    """Per image and explanation (same nesting as ``explained``), a dict with
    ``deletion_auc`` and/or ``insertion_auc`` (None where the curve is undefined: the
    output does not change between the original and the all-fill image), ``by``
    (``"segments"`` or ``"blocks"``), ``steps`` and ``forward_passes``."""
    kinds = [kind for kind in EVALUATIONS if kind in set(evaluate)]
    unknown = set(evaluate) - set(EVALUATIONS)
    if unknown or not kinds:
        raise ConfigError("config.bad_evaluate", f"evaluate takes {list(EVALUATIONS)}")
    flat = [(i, e) for i, row in enumerate(explained) for e in row]
    scores: list[dict[str, Any]] = [
        {"by": _unit(e), "steps": EVALUATION_STEPS, "forward_passes": 0} for _, e in flat
    ]
    for by in ("segments", "blocks"):
        picked = [n for n, (_, e) in enumerate(flat) if _unit(e) == by]
        if not picked:
            continue
        chosen = [flat[n] for n in picked]
        for kind in kinds:
            x, y = perturbation_curves(
                kind,
                predict_fn,
                np.stack([images[i] for i, _ in chosen]),
                [e.heatmap for _, e in chosen],
                [e.target.column for _, e in chosen],
                steps=EVALUATION_STEPS,
                by=by,
                segments=_segments(chosen) if by == "segments" else None,
                batch_size=batch_size,
            )
            for n, xs, ys in zip(picked, x, y, strict=True):
                auc = curve_auc(xs, ys)
                scores[n][f"{kind}_auc"] = None if np.isnan(auc) else round(auc, 6)
                scores[n]["forward_passes"] += EVALUATION_STEPS + 2
    out: list[list[dict[str, Any]]] = [[] for _ in explained]
    for (i, _), score in zip(flat, scores, strict=True):
        out[i].append(score)
    return out


def _segments(chosen: list[tuple[int, Explanation]]) -> list[np.ndarray]:
    return [e.segments for _, e in chosen if e.segments is not None]


def _unit(explanation: Explanation) -> str:
    return "segments" if explanation.segments is not None else "blocks"
