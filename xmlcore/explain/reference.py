"""The reference engine: the ``lime`` package itself, for checking and comparison.

``LimeExplainer(engine="reference")`` runs ``lime.lime_image.LimeImageExplainer`` one
image at a time (its per-sample Python loop, its batches, one ``Ridge`` per label) and
converts the ``ImageExplanation`` into the shared ``Explanation`` fields. The fast engine
must agree with it to 1e-6 given the same segments and masks.

All features are kept (``feature_selection="none"``, ``num_features=K``) so the
coefficients are those of one ridge over every superpixel. ``lime`` keeps only the last
label's score and local prediction on the ``ImageExplanation``; a small ``LimeBase``
subclass records them per label from lime's own ``explain_instance_with_data``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmlcore.explain.sampling import Fill


@dataclass(frozen=True)
class ReferenceFit:
    """lime's answer for one image: per output column, weights ``(K,)`` and the rest;
    and lime's own samples: ``masks`` ``(S, K)``, model ``outputs`` ``(S, m)`` and
    ``kernel_weights`` ``(S,)`` (for ``stability@k``)."""

    segments: np.ndarray
    coef: dict[int, np.ndarray]
    intercept: dict[int, float]
    score: dict[int, float]
    local_prediction: dict[int, float]
    masks: np.ndarray
    outputs: np.ndarray
    kernel_weights: np.ndarray


def explain_with_lime(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    columns: Sequence[int],
    *,
    segmenter: Callable[[np.ndarray], np.ndarray],
    num_samples: int,
    batch_size: int,
    kernel_width: float,
    fill: Fill,
    alpha: float,
    seed: int,
) -> ReferenceFit:
    """Run ``LimeImageExplainer.explain_instance`` on one uint8 image for ``columns``.

    ``seed`` seeds lime's ``random_state``: its mask draw is
    ``randint(0, 2, num_samples * K)``, the same as ``sampling.draw_masks``.
    """
    from lime import lime_base, lime_image
    from sklearn.linear_model import Ridge

    class RecordingLimeBase(lime_base.LimeBase):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.records: dict[int, tuple[Any, ...]] = {}
            self.samples: tuple[Any, Any, Any] | None = None

        def explain_instance_with_data(self, *args: Any, **kwargs: Any) -> Any:
            result = super().explain_instance_with_data(*args, **kwargs)
            self.records[int(args[3])] = result
            self.samples = (args[0], args[1], self.kernel_fn(args[2]))
            return result

    explainer = lime_image.LimeImageExplainer(
        kernel_width=kernel_width, feature_selection="none", random_state=seed
    )
    base = RecordingLimeBase(explainer.base.kernel_fn, random_state=explainer.random_state)
    explainer.base = base
    regressor = None if alpha == 1.0 else Ridge(alpha=alpha, fit_intercept=True)
    segments = segmenter(image)
    n_segments = int(segments.max()) + 1
    result = explainer.explain_instance(
        image,
        lambda batch: _as_2d(predict_fn(batch)),
        labels=tuple(int(c) for c in columns),
        hide_color=None if fill == "mean" else fill,
        top_labels=None,
        num_features=n_segments,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=segmenter,
        model_regressor=regressor,
        random_seed=seed,
    )
    samples = base.samples
    assert samples is not None  # explain_instance fits at least one label
    coef = {}
    for column, pairs in result.local_exp.items():
        weights = np.zeros(n_segments)
        for feature, weight in pairs:
            weights[int(feature)] = weight
        coef[int(column)] = weights
    return ReferenceFit(
        segments=np.asarray(result.segments, dtype=np.int32),
        coef=coef,
        intercept={int(c): float(v) for c, v in result.intercept.items()},
        score={c: float(r[2]) for c, r in base.records.items()},
        local_prediction={c: float(np.ravel(r[3])[0]) for c, r in base.records.items()},
        masks=np.asarray(samples[0], dtype=np.float64),
        outputs=np.asarray(samples[1], dtype=np.float64),
        kernel_weights=np.asarray(samples[2], dtype=np.float64),
    )


def _as_2d(outputs: np.ndarray) -> np.ndarray:
    arr = np.asarray(outputs)
    return arr[:, None] if arr.ndim == 1 else arr
