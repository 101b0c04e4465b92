"""The SHAP row of ``bench/lime_vs_reference.py``: our KernelSHAP vs its bare forward
passes vs the ``shap`` package's ``KernelExplainer`` on the same model and coalitions.

- ``ours_s``: ``KernelShapExplainer.explain`` on all images at once (segmentation,
  coalitions, perturbed images, the solve: everything);
- ``forward_s``: only the model on the same images ours sends it (the originals, each
  image's background and its coalitions), precomputed, in batches of our batch size;
  ours and forward runs alternate (paired median as for LIME);
- ``shap_package_s``: per image, ``shap.KernelExplainer(f, zeros((1, K)))`` with
  ``f(z)`` = the model on the coalition images (built as ours, in batches of our batch
  size), ``shap_values(ones, nsamples=n, l1_reg=0)`` after ``np.random.seed`` = our image
  seed: the same coalitions, so ``phi_max_abs_diff`` compares the values.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import shap

from xmlcore.explain import KernelShapExplainer, SlicSegmenter
from xmlcore.explain.lime import image_seed
from xmlcore.explain.sampling import SampleRequest, fill_image
from xmlcore.explain.shapley import shapley_coalitions

PredictFn = Callable[[np.ndarray], np.ndarray]


def _requests(images: np.ndarray, n_samples: int) -> list[SampleRequest]:
    segmenter, requests = SlicSegmenter(), []
    for i, image in enumerate(images):
        segments = segmenter(image)
        k = int(segments.max()) + 1
        coalitions = shapley_coalitions(k, n_samples, np.random.RandomState(image_seed(0, i)))
        masks = np.vstack([np.zeros((1, k), np.uint8), coalitions.masks])
        requests.append(SampleRequest(image, fill_image(image, segments, "mean"), segments, masks))
    return requests


def forward_batches(images: np.ndarray, n_samples: int, batch_size: int) -> list[np.ndarray]:
    """Every image ours sends the model, packed the same way, built before timing."""
    requests = _requests(images, n_samples)
    total = sum(len(r.masks) for r in requests)
    flat = np.empty((total, *images.shape[1:]), np.uint8)
    start = 0
    for req in requests:
        req.perturb_rows(flat[start : start + len(req.masks)], 0, len(req.masks))
        start += len(req.masks)
    originals = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return originals + [flat[i : i + batch_size] for i in range(0, total, batch_size)]


def run_shap_package(
    predict: PredictFn, images: np.ndarray, n_samples: int, batch_size: int, columns: list[int]
) -> list[np.ndarray]:
    """The package's values per image, ``(K, len(columns))``."""
    values = []
    for i, image in enumerate(images):
        segments = SlicSegmenter()(image)
        background = fill_image(image, segments, "mean")
        k = int(segments.max()) + 1

        def f(
            z: np.ndarray,
            image: Any = image,
            segments: Any = segments,
            background: Any = background,
        ) -> Any:
            keep = np.asarray(z, dtype=bool)[:, segments][..., None]
            batch = np.where(keep, image[None], background[None])
            parts = [predict(batch[j : j + batch_size]) for j in range(0, len(batch), batch_size)]
            return np.concatenate(parts)[:, columns]

        explainer = shap.KernelExplainer(f, np.zeros((1, k)))
        np.random.seed(image_seed(0, i))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phi = explainer.shap_values(np.ones((1, k)), nsamples=n_samples, l1_reg=0, silent=True)
        values.append(np.asarray(phi)[0])
    return values


def shap_row(
    predict: PredictFn,
    images: np.ndarray,
    n_samples: int,
    batch_size: int,
    targets: list[int],
    repeats: int,
) -> dict[str, Any]:
    batches = forward_batches(images, n_samples, batch_size)
    for size in {len(b) for b in batches}:  # compile every batch shape once, untimed
        predict(np.zeros((size, *images.shape[1:]), np.uint8))
    ours = KernelShapExplainer(predict, n_samples=n_samples, batch_size=batch_size, seed=0)
    result = ours.explain(images, targets)  # warm-up
    ours_times, forward_times = [], []
    for _ in range(max(5, repeats + 2)):  # alternated: both see the same machine load
        ours_times.append(_timed(lambda: ours.explain(images, targets)))
        forward_times.append(_timed(lambda: [predict(b) for b in batches]))
    package: list[np.ndarray] = []
    package_s = _timed(
        lambda: package.extend(run_shap_package(predict, images, n_samples, batch_size, targets))
    )
    diff = max(
        float(np.abs(e.segment_weights - package[i][:, j]).max())
        for i, row in enumerate(result)
        for j, e in enumerate(row)
    )
    ours_s, forward_s = min(ours_times), min(forward_times)
    return {
        "ours_s": round(ours_s, 4),
        "forward_s": round(forward_s, 4),
        "forward_passes": int(sum(len(b) for b in batches)),
        "overhead_vs_forward": round(ours_s / forward_s, 3),
        "overhead_vs_forward_paired_median": round(
            float(np.median(np.array(ours_times) / np.array(forward_times))), 3
        ),
        "shap_package_s": round(package_s, 4),
        "speedup_vs_shap_package": round(package_s / ours_s, 2),
        "phi_max_abs_diff": diff,
        "n_samples": n_samples,
    }


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
