"""KernelSHAP over superpixels, on LIME's perturbation machinery.

A superpixel is a player; coalition ``z`` (1 = present) is the image with the absent
superpixels taken from the background, the ``fill`` image (``"mean"``: each
superpixel's mean colour, as LIME's). The coalitions and their Shapley kernel weights
are ``shap.KernelExplainer``'s (``xmlcore.explain.shapley``), and the values are the
solution of its efficiency-constrained weighted least squares, so for the same seed
this equals ``KernelExplainer(f, zeros).shap_values(ones, nsamples=n, l1_reg=0)`` with
``f(z)`` = the model on the perturbed image, after ``np.random.seed(image seed)``
(``tests/test_kernel_shap.py`` runs the real package).

Cost: ``n_samples`` coalitions + the background + the image itself = ``n_samples + 2``
forward passes per image (fewer when ``2**K - 2`` is smaller: every coalition is then
enumerated), for every target at once. The perturbed images are built exactly as
LIME's (``sampling.run_requests``: vectorised in uint8 on the host, or on the device
with ``PerturbingPredictor``), packing several images into each forward batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.explain.base import Explainer, PredictFn, Targets, check_images, normalize_targets
from xmlcore.explain.lime import image_seed, versions
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.explain.sampling import (
    Fill,
    SampleRequest,
    fill_image,
    predict_outputs,
    run_requests,
    stack_images,
)
from xmlcore.explain.segmentation import Segmenter, SlicSegmenter, segment_hash
from xmlcore.explain.shapley import Coalitions, shapley_coalitions, solve_shapley


class KernelShapExplainer(Explainer):
    """KernelSHAP for any ``predict_fn: uint8 (N, H, W, 3) -> (N, m)``.

    ``explain(images, targets)`` returns, per image and target, an ``Explanation`` with
    ``segment_weights`` = the Shapley values ``(K,)`` (they sum to ``prediction -
    intercept``), ``intercept`` = the model on the background, ``local_prediction`` =
    ``intercept + sum(weights)`` (= ``prediction``, by the efficiency constraint),
    ``top_segments`` and ``heatmap = weights[segments]``. ``score`` is None (no
    surrogate fit to score). Image ``i`` draws with ``image_seed(seed, i)``.
    """

    method = "kernel_shap"

    def __init__(
        self,
        predict_fn: PredictFn,
        *,
        segmenter: Segmenter | None = None,
        n_samples: int = 1000,
        batch_size: int = 256,
        fill: Fill = "mean",
        top_k: int = 5,
        seed: int | None = 0,
    ) -> None:
        if n_samples < 1 or batch_size < 1 or top_k < 1:
            raise ConfigError(
                "config.kernel_shap",
                f"need n_samples, batch_size, top_k >= 1: {n_samples}, {batch_size}, {top_k}",
            )
        self.predict_fn = predict_fn
        self.segmenter = segmenter if segmenter is not None else SlicSegmenter()
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.fill = fill
        self.top_k = top_k
        self.seed = seed

    def explain(self, images: np.ndarray, targets: Targets) -> list[list[Explanation]]:
        batch = check_images(stack_images(images))
        originals = np.concatenate(
            [
                predict_outputs(self.predict_fn, batch[i : i + self.batch_size], None)
                for i in range(0, len(batch), self.batch_size)
            ]
        )
        rows = normalize_targets(targets, len(batch), originals.shape[1])
        seed = (
            self.seed
            if self.seed is not None
            else int(np.random.SeedSequence().generate_state(1)[0])
        )
        requests: list[tuple[SampleRequest, Coalitions]] = []
        # Only the targets' outputs are kept: a model may have thousands of labels.
        columns = np.unique([t.column for row in rows for t in row])
        # Lazy: segmentation and coalitions of image i+1 overlap the model's work on i.
        run_requests(
            self.predict_fn,
            self._requests(batch, seed, requests),
            self.batch_size,
            columns,
            batch[0].shape,
        )
        return [
            self._explanations(i, request, coalitions, originals[i], row, columns, seed)
            for i, ((request, coalitions), row) in enumerate(zip(requests, rows, strict=True))
        ]

    explain_batch = explain

    def _requests(
        self, batch: np.ndarray, seed: int, made: list[tuple[SampleRequest, Coalitions]]
    ) -> Iterator[SampleRequest]:
        for i, image in enumerate(batch):
            segments = self.segmenter(image)
            n_segments = int(segments.max()) + 1
            if n_segments >= 2:
                rng = np.random.RandomState(image_seed(seed, i))
                coalitions = shapley_coalitions(n_segments, self.n_samples, rng)
            else:
                coalitions = Coalitions(np.zeros((0, 1), np.uint8), np.zeros(0))
            # Row 0 is the background (every superpixel absent).
            masks = np.vstack([np.zeros((1, n_segments), np.uint8), coalitions.masks])
            request = SampleRequest(image, fill_image(image, segments, self.fill), segments, masks)
            made.append((request, coalitions))
            yield request

    def _explanations(
        self,
        index: int,
        request: SampleRequest,
        coalitions: Coalitions,
        original: np.ndarray,
        row: list[TargetInfo],
        columns: np.ndarray,
        seed: int,
    ) -> list[Explanation]:
        """``request``'s outputs hold ``columns`` (sorted); ``row`` picks among them."""
        positions = np.searchsorted(columns, [t.column for t in row])
        outputs = request.result()[:, positions]
        background = outputs[0]
        wanted = original[[t.column for t in row]]
        phi = solve_shapley(coalitions.masks, coalitions.weights, outputs[1:], wanted, background)
        provenance = self._provenance(request.segments, seed, index, len(coalitions.masks))
        return [
            self._explanation(index, target, request.segments, phi[:, j], background[j],
                              float(original[target.column]), provenance)
            for j, target in enumerate(row)
        ]  # fmt: skip

    def _explanation(
        self,
        index: int,
        target: TargetInfo,
        segments: np.ndarray,
        weights: np.ndarray,
        background: float,
        prediction: float,
        provenance: dict[str, Any],
    ) -> Explanation:
        order = np.argsort(-weights, kind="stable")
        return Explanation(
            image_index=index,
            target=target,
            method=self.method,
            heatmap=weights[segments].astype(np.float32),
            prediction=prediction,
            segments=segments,
            segment_weights=weights,
            intercept=float(background),
            score=None,
            local_prediction=float(background + weights.sum()),
            top_segments=[int(s) for s in order[: self.top_k]],
            num_samples=int(provenance["coalitions"]),
            provenance=provenance,
        )

    def _provenance(
        self, segments: np.ndarray, seed: int, index: int, n_coalitions: int
    ) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_samples": self.n_samples,
            "coalitions": n_coalitions,
            "forward_passes": n_coalitions + 2,
            "batch_size": self.batch_size,
            "fill": self.fill if isinstance(self.fill, str | int) else list(self.fill),
            "background": "fill",
            "l1_reg": 0,
            "segmenter": self.segmenter.describe(),
            "segment_hash": segment_hash(segments),
            "num_segments": int(segments.max()) + 1,
            "seed": seed,
            "image_seed": image_seed(seed, index),
            "versions": dict(versions()),
        }
