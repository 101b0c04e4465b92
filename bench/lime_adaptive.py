"""Adaptive LIME sampling: how often it finds the same top-5 superpixels as 5,000 samples.

For every image, the target is the model's highest output (its top label, for a
trained two-step model). The reference answer is the top-5 superpixel SET of a
5,000-sample run with a different seed (so it shares no masks with the runs scored).
Scored: adaptive sampling (``AdaptiveSampling()`` defaults, capped at the default 1,000
samples; ``--criterion`` picks another rule), fixed 1,000 samples (the default) and
fixed samples at the adaptive run's mean budget. Goal: >= 90 % agreement with <= 40 %
of the default 1,000 samples.

Model: a two-step model trained on ``generate_dishes`` when ``xmlcore.model`` can be
imported (``--model trained``), else (or with ``--model random``) a small Keras CNN with
fixed-seed random weights, which the JSON says.

Usage: ``python bench/lime_adaptive.py [--quick] [--model auto|trained|random]``;
the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from xmlcore.datasets import generate_dishes
from xmlcore.explain import AdaptiveSampling, LimeExplainer

SIZE = 64
DEFAULT_SAMPLES = 1000
PredictFn = Callable[[np.ndarray], np.ndarray]


def random_cnn(seed: int = 0) -> PredictFn:
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(x)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(20)(x))
    model.compile(jit_compile=False)
    return model.predict_on_batch


def trained_two_step(n_train: int, epochs: int) -> tuple[PredictFn, int]:
    """(outputs_fn, latent_dim) of a small two-step model trained on generated dishes
    (seed 1; the explained images come from seed 0, so they are held out)."""
    from xmlcore.model import train_two_step

    data = generate_dishes("tiny", seed=1, n_images=n_train, image_size=SIZE)
    model = train_two_step(
        data.images, data.label_space, layer_sizes=(16, 8), epochs=epochs, seed=0
    )
    return model.outputs_fn, int(model.latent_dim)


def choose_model(kind: str, quick: bool) -> tuple[PredictFn, int, str]:
    if kind in ("auto", "trained"):
        try:
            fn, latent_dim = trained_two_step(120 if quick else 400, 5 if quick else 15)
            return fn, latent_dim, "two-step model trained on generate_dishes"
        except ImportError as err:
            if kind == "trained":
                raise
            print(f"xmlcore.model unavailable ({err}); using a random-weight CNN", flush=True)
    return random_cnn(), 0, "small keras CNN, random fixed-seed weights (no trained model)"


def top_sets(predict: PredictFn, images: np.ndarray, targets: list[list[int]], **kw) -> tuple:
    start = time.perf_counter()
    result = LimeExplainer(predict, **kw).explain(images, targets)
    seconds = time.perf_counter() - start
    sets = [frozenset(row[0].top_segments[:5]) for row in result]
    used = [row[0].num_samples for row in result]
    return sets, used, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 images")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--model", choices=("auto", "trained", "random"), default="auto")
    parser.add_argument("--criterion", choices=("separation", "set", "ranking"), default=None)
    args = parser.parse_args()
    n_images = args.images or (12 if args.quick else 60)
    predict, latent_dim, model_name = choose_model(args.model, args.quick)
    images = generate_dishes("tiny", seed=0, n_images=n_images, image_size=SIZE).images
    outputs = np.asarray(predict(images))
    targets = [[latent_dim + int(np.argmax(row[latent_dim:]))] for row in outputs]

    reference, _, ref_s = top_sets(predict, images, targets, num_samples=5000, seed=12345)
    rule = AdaptiveSampling(criterion=args.criterion) if args.criterion else AdaptiveSampling()
    adaptive, used, adaptive_s = top_sets(
        predict, images, targets, num_samples=DEFAULT_SAMPLES, adaptive=rule
    )
    fixed, _, fixed_s = top_sets(predict, images, targets, num_samples=DEFAULT_SAMPLES)
    budget = round(float(np.mean(used)))
    matched, _, _ = top_sets(predict, images, targets, num_samples=budget)

    def agreement(sets: list[frozenset]) -> float:
        return float(np.mean([a == b for a, b in zip(sets, reference, strict=True)]))

    print(
        json.dumps(
            {
                "agreement_adaptive": round(agreement(adaptive), 3),
                "mean_samples_adaptive": float(np.mean(used)),
                "max_samples_adaptive": int(max(used)),
                "fraction_of_default": round(float(np.mean(used)) / DEFAULT_SAMPLES, 3),
                "agreement_fixed_1000": round(agreement(fixed), 3),
                "agreement_fixed_same_budget": round(agreement(matched), 3),
                "same_budget_samples": budget,
                "adaptive_s": round(adaptive_s, 2),
                "fixed_1000_s": round(fixed_s, 2),
                "reference_5000_s": round(ref_s, 2),
                "rule": rule.to_json(),
                "n_images": n_images,
                "image_size": SIZE,
                "model": model_name,
            }
        )
    )


if __name__ == "__main__":
    main()
