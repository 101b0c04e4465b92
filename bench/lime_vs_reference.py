"""Fast LIME engine vs the reference ``lime`` package vs bare forward passes.

Same model, images, segments, masks (same seeds) and ``num_samples`` for every
contender. The model is a small Keras CNN at 64x64 (the layout of xmlcore's "small"
base: three conv 3x3 + max-pool blocks, 16/32/64 filters, then GAP, dense 256, dense
20) with fixed-seed RANDOM weights: timing does not depend on what the weights learnt.
Images come from ``xmlcore.datasets.generate_dishes``.

Timed:
- ``lime_s``: ``lime.lime_image.LimeImageExplainer.explain_instance`` per image with its
  default ``batch_size=10`` (``feature_selection="none"``, ``num_features=K``);
- ``lime_tuned_s``: the same with the best of a few larger batch sizes;
- ``ours_s``: ``LimeExplainer(engine="fast").explain`` on all images at once
  (segmentation included);
- ``forward_s``: only the model on the same number of precomputed perturbed images,
  in batches of our ``batch_size``; ours and forward runs alternate, and besides
  the ratio of their best times the JSON gives the median of the paired ratios
  (robust to a shared machine's load swings).
Every contender calls the same predict function, the fastest of the candidates tried
(Keras' compiled ``predict_on_batch`` with and without XLA, a bare ``Model.__call__``).

The ``shap`` key is the same comparison for KernelSHAP (``bench/shap_reference.py``):
ours vs its bare forward passes (``n_samples + 2`` per image) and vs the ``shap``
package's ``KernelExplainer`` given the same coalitions (``--no-shap`` skips it).

Usage: ``python bench/lime_vs_reference.py [--quick]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TQDM_DISABLE", "1")

import keras
import numpy as np
from lime import lime_image
from shap_reference import shap_row

from xmlcore.datasets import generate_dishes
from xmlcore.explain import LimeExplainer, SlicSegmenter
from xmlcore.explain.lime import image_seed
from xmlcore.explain.sampling import SampleRequest, draw_masks, fill_image

SIZE = 64
TARGETS = [0, 3, 7, 11, 19]
PredictFn = Callable[[np.ndarray], np.ndarray]


def build_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(x)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(20)(x))


def predict_candidates(seed: int) -> dict[str, PredictFn]:
    plain, xla = build_model(seed), build_model(seed)
    plain.compile(jit_compile=False)
    xla.compile(jit_compile=True)
    return {
        "predict_on_batch": plain.predict_on_batch,
        "predict_on_batch_xla": xla.predict_on_batch,
        "model_call": lambda b: np.asarray(plain(b.astype(np.float32), training=False)),
    }


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def perturbed_batches(images: np.ndarray, num_samples: int, batch_size: int) -> list[np.ndarray]:
    """Every perturbed image ours would build, packed the same way, built before timing."""
    segmenter, out = SlicSegmenter(), []
    requests = []
    for i, image in enumerate(images):
        segments = segmenter(image)
        rng = np.random.RandomState(image_seed(0, i))
        masks = draw_masks(rng, num_samples, int(segments.max()) + 1, first=True)
        requests.append(SampleRequest(image, fill_image(image, segments, "mean"), segments, masks))
    flat = np.empty((len(images) * num_samples, SIZE, SIZE, 3), np.uint8)
    for i, req in enumerate(requests):
        req.perturb_rows(flat[i * num_samples : (i + 1) * num_samples], 0, num_samples)
    for start in range(0, len(flat), batch_size):
        out.append(flat[start : start + batch_size])
    return out


def run_lime(
    predict: PredictFn, images: np.ndarray, num_samples: int, batch_size: int
) -> list[dict[int, np.ndarray]]:
    """Stock lime per image, seeded like our engine so the masks are the same."""
    coefs = []
    for i, image in enumerate(images):
        explainer = lime_image.LimeImageExplainer(
            feature_selection="none", random_state=image_seed(0, i)
        )
        segmenter = SlicSegmenter()
        result = explainer.explain_instance(
            image,
            predict,
            labels=TARGETS,
            top_labels=None,
            num_features=int(segmenter(image).max()) + 1,
            num_samples=num_samples,
            batch_size=batch_size,
            segmentation_fn=segmenter,
            random_seed=0,
        )
        coefs.append({c: _dense(pairs) for c, pairs in result.local_exp.items()})
    return coefs


def _dense(pairs: list[tuple[int, float]]) -> np.ndarray:
    weights = np.zeros(len(pairs))
    for feature, weight in pairs:
        weights[int(feature)] = weight
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 images, 1 repeat (~1 min)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-shap", action="store_true", help="skip the KernelSHAP row")
    args = parser.parse_args()
    n_images = args.images or (4 if args.quick else 16)
    repeats = 1 if args.quick else 3
    tuned_sizes = (100, 500) if args.quick else (50, 100, 250, 500)
    images = generate_dishes("tiny", seed=0, n_images=n_images, image_size=SIZE).images
    n, bs = args.num_samples, args.batch_size

    batches = perturbed_batches(images, n, bs)
    candidates = predict_candidates(0)
    shapes = {len(b) for b in batches} | {10, *tuned_sizes}
    for fn in candidates.values():  # trace / compile every batch shape once, untimed
        for size in shapes:
            fn(np.zeros((size, SIZE, SIZE, 3), np.uint8))
    forward = {
        name: best_of(lambda fn=fn: [fn(b) for b in batches], repeats)
        for name, fn in candidates.items()
    }
    chosen = min(forward, key=lambda k: forward[k])
    predict = candidates[chosen]
    print(f"forward pass candidates (s): {forward} -> {chosen}", flush=True)

    ours = LimeExplainer(predict, num_samples=n, batch_size=bs, seed=0)
    result = ours.explain(images, TARGETS)  # warm-up: this run's own batch shapes
    # Alternate ours and the bare forward passes so both see the same machine load.
    ours_times, forward_times = [], []
    for _ in range(max(2, repeats + 1)):
        ours_times.append(best_of(lambda: ours.explain(images, TARGETS), 1))
        forward_times.append(best_of(lambda: [predict(b) for b in batches], 1))
    ours_s, forward_s = min(ours_times), min(forward_times)
    paired = float(np.median(np.array(ours_times) / np.array(forward_times)))
    print(f"ours {ours_times}  forward {forward_times}", flush=True)

    lime_coefs: list[dict[int, np.ndarray]] = []
    lime_s = best_of(lambda: lime_coefs.extend(run_lime(predict, images, n, 10)), 1)
    tuned = {
        size: best_of(lambda s=size: run_lime(predict, images, n, s), 1) for size in tuned_sizes
    }
    best_size = min(tuned, key=lambda k: tuned[k])
    print(f"lime (batch 10) {lime_s:.2f}s  tuned {tuned}", flush=True)

    shap_figures = None if args.no_shap else shap_row(predict, images, n, bs, TARGETS, repeats)
    print(f"kernel_shap: {shap_figures}", flush=True)
    coef_diff = max(
        float(np.abs(e.segment_weights - lime_coefs[i][e.target.column]).max())
        for i, row in enumerate(result)
        for e in row
    )
    print(
        json.dumps(
            {
                "ours_s": round(ours_s, 4),
                "lime_s": round(lime_s, 4),
                "lime_tuned_s": round(tuned[best_size], 4),
                "lime_tuned_batch_size": best_size,
                "forward_s": round(forward_s, 4),
                "speedup_vs_lime": round(lime_s / ours_s, 2),
                "speedup_vs_lime_tuned": round(tuned[best_size] / ours_s, 2),
                "overhead_vs_forward": round(ours_s / forward_s, 3),
                "overhead_vs_forward_paired_median": round(paired, 3),
                "coef_max_abs_diff": coef_diff,
                "shap": shap_figures,
                "n_images": n_images,
                "num_samples": n,
                "batch_size": bs,
                "image_size": SIZE,
                "n_targets": len(TARGETS),
                "predict_fn": chosen,
                "model": "small keras CNN, random fixed-seed weights",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, {keras.backend.backend()}",
            }
        )
    )


if __name__ == "__main__":
    main()
