"""Label-ranking quality of the two-step model against its baselines, on generated dishes.

Protocol: ``generate_dishes(preset, seed)`` is split at random (seeded) into train and
test images. Four models are trained on the train images with the SAME CNN settings
(base, image size, head, epochs, learning rate, seed):

- ``two_step``: deep non-negative autoencoder (paper's MSE loss) + latent regressor;
- ``two_step_tail``: the same with the tail-aware ``propensity_mse`` autoencoder loss;
- ``binary_relevance``: a sigmoid per label on the same CNN body;
- ``nmf``: sklearn NMF with the autoencoder's last-layer k + the same latent regressor.

Test-set figures: P@k, PSP@k (propensities from the TRAIN label counts, Jain et al.
A=0.55, B=1.5) and coverage@k (share of labels that reach any top-k). ``hierarchy_nmi``
compares the labels' layer-1 assignment (the unit where each label has its largest
weight in H_1 of ``two_step``) with the generator's true dish-type groups.

Run: ``.venv/bin/python bench/xml_quality.py --quick`` (small preset, small base, a few
epochs: under 3 minutes on 2 CPU cores) or ``--preset paper --base vgg16 ...``.
The LAST line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmlcore.baselines import BinaryRelevanceModel, NMFTwoStepModel
from xmlcore.datasets import generate_dishes
from xmlcore.metrics import (
    assign_groups_from_weights,
    evaluate_ranking,
    hierarchy_nmi,
    propensities,
)
from xmlcore.model import train_two_step

REPORTED = ("p@1", "p@5", "psp@5", "coverage@5")
QUICK = {"preset": "small", "epochs": 15, "learning_rate": 3e-3, "ae_epochs": 200}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small preset, CPU-sized run")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--base", default="small")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--fine-tune-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--head-units", type=int, nargs="+", default=[128])
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="autoencoder sizes")
    parser.add_argument("--ae-epochs", type=int, default=300)
    parser.add_argument("--tail-power", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def default_layers(n_labels: int, n_groups: int) -> tuple[int, int]:
    """Paper's (64, 16) when the vocabulary allows; else two layer-1 units per label group."""
    if n_labels > 128:
        return (64, 16)
    first = max(4, min(n_labels // 2, n_groups * 2))
    return (first, max(2, first // 2))


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def network_params(args: argparse.Namespace) -> dict[str, Any]:
    """The CNN settings every model shares."""
    return {
        "base": args.base,
        "image_size": None,  # each model takes the generated images as they are
        "weights": args.weights,
        "fine_tune_layers": args.fine_tune_layers,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }


def train_models(args: argparse.Namespace, images: np.ndarray, labels: Any) -> dict[str, Any]:
    """Fit the four models; returns name -> (model, seconds)."""
    net = network_params(args)
    head = {"head_units": tuple(args.head_units)}
    ae = {"epochs": args.ae_epochs}
    fitted: dict[str, Any] = {}

    def timed(name: str, fit: Any) -> None:
        start = time.perf_counter()
        fitted[name] = (fit(), time.perf_counter() - start)
        print(f"trained {name:<17} in {fitted[name][1]:6.1f} s", file=sys.stderr)

    def two_step(loss: str, extra: dict[str, Any]) -> Any:
        return train_two_step(
            images, labels, layer_sizes=args.layers, ae_loss=loss, ae_params={**ae, **extra},
            regressor_params=head, **net,
        )  # fmt: skip

    timed("two_step", lambda: two_step("mse", {}))
    timed("two_step_tail", lambda: two_step("propensity_mse", {"tail_power": args.tail_power}))
    timed("binary_relevance", lambda: BinaryRelevanceModel(**net, **head).fit(images, labels))
    timed(
        "nmf",
        lambda: NMFTwoStepModel(n_components=args.layers[-1], **net, **head).fit(images, labels),
    )
    return fitted


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, split, train, evaluate; returns the JSON-ready result."""
    ds = generate_dishes(args.preset, seed=args.seed, **_size_override(args))
    space = ds.label_space
    if args.layers is None:
        args.layers = default_layers(space.n_labels, len(set(ds.label_groups.values())))
    train, test = split_rows(space.n_images, args.test_fraction, args.seed)
    fitted = train_models(args, ds.images[train], space.subset(train))
    Y_test = space.matrix[test]
    propensity = propensities(space.matrix[train])
    result: dict[str, Any] = {}
    for name, (model, seconds) in fitted.items():
        scores = model.predict_scores(ds.images[test])
        figures = evaluate_ranking(Y_test, scores, ks=(1, 3, 5), propensity=propensity)
        result[name] = {key: round(figures[key], 4) for key in REPORTED}
        result[name]["train_seconds"] = round(seconds, 1)
    H1 = fitted["two_step"][0].autoencoder.H_[0]
    true_groups = [ds.label_groups[label] for label in space.vocabulary]
    result["hierarchy_nmi"] = round(hierarchy_nmi(assign_groups_from_weights(H1), true_groups), 4)
    result["setup"] = {
        "preset": args.preset, "n_train": len(train), "n_test": len(test),
        "n_labels": space.n_labels, "image_size": int(ds.images.shape[1]), "base": args.base,
        "epochs": args.epochs, "layers": list(args.layers), "seed": args.seed,
    }  # fmt: skip
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"{'model':<18}" + "".join(f"{key:>12}" for key in REPORTED))
    for name in ("two_step", "two_step_tail", "binary_relevance", "nmf"):
        print(f"{name:<18}" + "".join(f"{result[name][key]:>12.4f}" for key in REPORTED))
    print(f"hierarchy NMI (H_1 vs true groups): {result['hierarchy_nmi']:.4f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print_table(result)
    print(json.dumps(result, sort_keys=True))
    return result


def _size_override(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.image_size is None else {"image_size": args.image_size}


if __name__ == "__main__":
    main()
