"""How well do the explanation methods find the object they explain? Generated dishes.

Protocol: ``generate_dishes(preset, seed)`` is split (seeded) into train and test
images; a two-step model is trained on the train images (``train_two_step``). For each
of ``--n-explain`` test images, the target is the decoded score of the image's visible
true label that the model scores highest; that label's pixel mask is the ground truth.
Every method explains the same (image, label) pairs:

- ``lime`` (SLIC superpixels, ``--lime-samples`` samples), ``occlusion`` (sliding
  window), ``input_x_gradient``, ``integrated_gradients``, ``smoothgrad``, ``gradcam``
  (last convolution), and ``random`` (i.i.d. noise: the chance level).

Scores (``xmlcore.evaluate``): pointing game and mass in mask (localisation), deletion
AUC (lower is better) and insertion AUC (higher is better) of the normalised output
curve (faithfulness). ``mask_share`` is the mean share of the image the masks cover,
which is what ``random`` should get for mass in mask.

Run: ``.venv/bin/python bench/explain_quality.py --quick`` (under 3 minutes on 2 CPU
cores). The LAST line printed is one JSON object: method -> scores, plus ``setup``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmlcore.datasets import generate_dishes
from xmlcore.evaluate import evaluate_explanations, random_attribution
from xmlcore.explain.gradient_methods import (
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
)
from xmlcore.explain.lime import LimeExplainer
from xmlcore.explain.occlusion import OcclusionExplainer
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.model import TwoStepModel, train_two_step

SCORES = ("pointing_game", "mass_in_mask", "deletion_auc", "insertion_auc")
QUICK = {"epochs": 10, "n_explain": 24, "lime_samples": 300, "steps": 16, "ae_epochs": 200}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run, < 3 min")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--base", default="small")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--ae-epochs", type=int, default=300)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--n-explain", type=int, default=100)
    parser.add_argument("--lime-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def layer_sizes(n_labels: int, n_groups: int) -> tuple[int, int]:
    """The paper's (64, 16) when the vocabulary allows; else about two units per group
    (as ``bench/xml_quality.py``)."""
    if n_labels > 128:
        return (64, 16)
    first = max(4, min(n_labels // 2, n_groups * 2))
    return (first, max(2, first // 4))


def choose_targets(
    model: TwoStepModel, images: np.ndarray, masks: list[dict[str, np.ndarray]]
) -> tuple[list[int], list[TargetInfo], list[np.ndarray]]:
    """Per image with a visible label: the best-scored visible true label and its mask."""
    scores = model.predict_scores(images)
    index = {name: j for j, name in enumerate(model.vocabulary)}
    rows, targets, truth = [], [], []
    for i, visible in enumerate(masks):
        if not visible:
            continue
        name = max(visible, key=lambda label: scores[i, index[label]])
        column = model.latent_dim + index[name]
        rows.append(i)
        targets.append(TargetInfo(column=column, kind="label", index=index[name], name=name))
        truth.append(visible[name])
    return rows, targets, truth


def explainers(model: TwoStepModel, args: argparse.Namespace, size: int) -> dict[str, Any]:
    keras_model = model.keras_model()
    return {
        "lime": LimeExplainer(model.outputs_fn, num_samples=args.lime_samples, seed=args.seed),
        "occlusion": OcclusionExplainer(model.outputs_fn, patch=size // 8, stride=size // 16),
        "input_x_gradient": InputXGradient(keras_model),
        "integrated_gradients": IntegratedGradients(keras_model, steps=32),
        "smoothgrad": SmoothGrad(keras_model, n=25, seed=args.seed),
        "gradcam": GradCAM(keras_model),
    }


def explain_all(
    name: str, explainer: Any, images: np.ndarray, targets: list[TargetInfo]
) -> list[Explanation]:
    if explainer is None:  # the chance level
        return [
            Explanation(i, t, "random", random_attribution(images.shape[1:3], seed=i))
            for i, t in enumerate(targets)
        ]
    result = explainer.explain(images, [[t] for t in targets])
    return [row[0] for row in result]


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    ds = generate_dishes(args.preset, seed=args.seed, **overrides)
    order = np.random.default_rng(args.seed).permutation(ds.n_images)
    n_test = max(1, round(ds.n_images * args.test_fraction))
    train, test = np.sort(order[n_test:]), np.sort(order[:n_test])[: args.n_explain]
    start = time.perf_counter()
    model = train_two_step(
        ds.images[train], ds.label_space.subset(train), base=args.base, epochs=args.epochs,
        layer_sizes=layer_sizes(ds.label_space.n_labels, len(set(ds.label_groups.values()))),
        ae_params={"epochs": args.ae_epochs}, seed=args.seed,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    print(f"trained the two-step model in {train_seconds:.1f} s", file=sys.stderr)
    rows, targets, masks = choose_targets(model, ds.images[test], [ds.masks[i] for i in test])
    images = ds.images[test][rows]
    result: dict[str, Any] = {}
    methods: dict[str, Any] = {**explainers(model, args, images.shape[1]), "random": None}
    for name, explainer in methods.items():
        start = time.perf_counter()
        found = explain_all(name, explainer, images, targets)
        seconds = time.perf_counter() - start
        scores = evaluate_explanations(model.outputs_fn, images, found, masks, steps=args.steps)
        result[name] = {key: round(scores[key], 4) for key in SCORES}
        result[name]["seconds"] = round(seconds, 2)
        print(f"{name}: {seconds:.1f} s", file=sys.stderr)
    result["setup"] = {
        "preset": args.preset, "image_size": int(images.shape[1]), "n_explained": len(rows),
        "epochs": args.epochs, "lime_samples": args.lime_samples, "steps": args.steps,
        "seed": args.seed, "train_seconds": round(train_seconds, 1),
        "mask_share": round(float(np.mean([m.mean() for m in masks])), 4),
    }  # fmt: skip
    return result


def print_table(result: dict[str, Any], methods: Callable[[], list[str]]) -> None:
    print(f"{'method':<22}" + "".join(f"{key:>15}" for key in (*SCORES, "seconds")))
    for name in methods():
        row = result[name]
        print(f"{name:<22}" + "".join(f"{row[key]:>15.4f}" for key in (*SCORES, "seconds")))
    print(f"mask share (chance level of mass_in_mask): {result['setup']['mask_share']:.4f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print_table(result, lambda: [key for key in result if key != "setup"])
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
