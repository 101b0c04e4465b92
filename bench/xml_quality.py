"""Label-ranking quality of the two-step model against its baselines, on generated dishes.

Protocol, per seed: ``generate_dishes(preset, seed, n_images=n_train + n_val + n_test)``
is split at random (seeded) into train, validation and test images (the generator keeps
the vocabulary whatever ``n_images`` is, so the test set can be much larger than the
preset's 20%; ``--quick`` tests on 1,000 images). ``--preset digits`` is real data
instead: scenes of scikit-learn's handwritten digits (``generate_digit_scenes``, 14
labels), train scenes first, validation and test scenes from held-out scans. Five
models are trained on the train images with the SAME CNN settings (base, image size,
head, epochs, learning rate, seed):

- ``two_step``: deep non-negative autoencoder (paper's MSE loss) + latent regressor with
  ``train_two_step``'s defaults (the decoder-aware label loss, ``xmlcore.label_loss``);
- ``two_step_paper``: the paper's pure step 2 (latent MSE only, ``label_loss="none"``);
- ``two_step_tail``: the tail-aware variant: propensity-weighted label loss
  (``label_loss="propensity_mse"``), then propensity re-ranking of the scores,
  ``score_j * propensity_j ** -alpha``, with alpha picked on the VALIDATION images (the
  largest PSP@5 whose P@5 is within 0.005 of alpha = 0); ``tail_curve`` reports the
  test figures for every alpha (the trade-off curve);
- ``two_step_bce``: the logistic autoencoder (``ae_loss="bce"``: per-label bias and
  sigmoid, cross-entropy; its step 2 label term is cross-entropy too);
- ``binary_relevance``: a sigmoid per label on the same CNN body;
- ``nmf``: sklearn NMF with the autoencoder's last-layer k + the same latent regressor
  (same regressor settings, label loss through the NMF components included).

The autoencoder's sizes are chosen per seed on the training labels by
``xmlcore.code_size.choose_layer_sizes`` (what a user of ``train_two_step`` gets; the
candidates' decoder ceilings go to stderr and to ``setup.code_size``) unless
``--layers`` is given (``--layers 30 15`` / ``64 16``: the sizes before issue 12).

Test-set figures: P@k, PSP@k (propensities from the TRAIN label counts, Jain et al.
A=0.55, B=1.5) and coverage@k (share of labels that reach any top-k). ``hierarchy_nmi``
compares the labels' layer-1 assignment (the unit where each label has its largest
weight in H_1 of ``two_step``) with the generator's true dish-type groups. With several
``--seeds`` every figure is the mean over seeds and ``<figure>_std`` its spread, and
``paired`` holds, for two_step against nmf and against two_step_bce (when they ran), the
per-seed P@5 and PSP@5 of both, their gaps, the mean gap, its standard error and on how
many seeds two_step is ahead; the same is printed as one table per pair.

Run: ``.venv/bin/python bench/xml_quality.py --quick`` (small preset, small base, a few
epochs, one seed, the four models the targets need: under 3 minutes on 2 cores),
``--quick --seeds 0 1 2``, ``--quick --models`` followed by all six names,
``--models two_step nmf`` (a subset, e.g. for many seeds) or ``--preset paper
--image-size 48 ...``. The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmlcore.baselines import BinaryRelevanceModel, NMFTwoStepModel
from xmlcore.code_size import choose_layer_sizes
from xmlcore.datasets import DIGIT_PRESETS, PRESETS, generate_digit_scenes, generate_dishes
from xmlcore.metrics import (
    assign_groups_from_weights,
    evaluate_ranking,
    hierarchy_nmi,
    propensities,
)
from xmlcore.model import DEFAULT_REGRESSOR_PARAMS, train_two_step

REPORTED = ("p@1", "p@3", "p@5", "psp@5", "coverage@5")
MODELS = (
    "two_step", "two_step_paper", "two_step_tail", "two_step_bce", "binary_relevance", "nmf",
    "random",
)  # fmt: skip
# two_step against each of these, seed by seed (same split, same CNN settings)
PAIRED = ("nmf", "two_step_bce")
PAIRED_FIGURES = ("p@5", "psp@5")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
# --quick trains the models the targets need (the 3-minute budget on 2 cores);
# add the others with --models.
QUICK_MODELS = ["two_step", "two_step_tail", "binary_relevance", "nmf"]
QUICK = {
    "preset": "small", "epochs": 15, "learning_rate": 3e-3, "ae_epochs": 200, "n_test": 1000,
    "models": QUICK_MODELS,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small preset, CPU-sized run")
    parser.add_argument("--preset", default="small", choices=[*PRESETS, *DIGIT_PRESETS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test-fraction", type=float, default=0.2, help="sets n_train")
    parser.add_argument("--n-test", type=int, default=None, help="default: test fraction")
    parser.add_argument("--n-val", type=int, default=200, help="images for the tail alpha")
    parser.add_argument("--base", default="small")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's")
    parser.add_argument("--fine-tune-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--head-units", type=int, nargs="+", default=[128])
    parser.add_argument(
        "--layers", type=int, nargs="+", default=None,
        help="autoencoder sizes (default: xmlcore.autoencoder.default_layer_sizes, as users get)",
    )  # fmt: skip
    parser.add_argument("--ae-epochs", type=int, default=300)
    parser.add_argument("--tail-power", type=float, default=1.0, help="label-loss weights")
    parser.add_argument("--bce-learning-rate", type=float, default=0.03, help="its autoencoder")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def split_sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """(n_train, n_val, n_test): train as the preset's split, val and test on top."""
    n_preset = {**PRESETS, **DIGIT_PRESETS}[args.preset].n_images
    n_train = n_preset - max(1, round(n_preset * args.test_fraction))
    n_test = n_preset - n_train if args.n_test is None else args.n_test
    return n_train, args.n_val, n_test


def split_rows(sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Seeded random disjoint row sets of the given sizes (sorted)."""
    order = np.random.default_rng(seed).permutation(sum(sizes))
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]


def network_params(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The CNN settings every model shares."""
    return {
        "base": args.base,
        "image_size": None,  # each model takes the generated images as they are
        "weights": args.weights,
        "fine_tune_layers": args.fine_tune_layers,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": seed,
    }


def model_fitters(args: argparse.Namespace, seed: int) -> dict[str, Callable[..., Any]]:
    """name -> fit(images, label_space) for every compared model."""
    net = network_params(args, seed)
    head: dict[str, Any] = {"head_units": tuple(args.head_units)}
    tail = {"label_loss": "propensity_mse", "tail_power": args.tail_power}
    # the same label loss (NMF has no lower-layer codes for an auxiliary head)
    nmf_params = {**head, "label_loss": DEFAULT_REGRESSOR_PARAMS["label_loss"]}

    def two_step(extra: dict[str, Any], ae_loss: str = "mse", **ae: Any) -> Callable[..., Any]:
        return lambda images, labels: train_two_step(
            images, labels, layer_sizes=args.layers, ae_loss=ae_loss,
            ae_params={"epochs": args.ae_epochs, **ae}, regressor_params={**head, **extra}, **net,
        )  # fmt: skip

    fitters = {
        "two_step": two_step({}),
        "two_step_paper": two_step({"label_loss": "none"}),
        "two_step_tail": two_step(tail),
        "two_step_bce": two_step({}, "bce", learning_rate=args.bce_learning_rate),
        "binary_relevance": lambda im, lab: BinaryRelevanceModel(**net, **head).fit(im, lab),
        "nmf": lambda im, lab: NMFTwoStepModel(
            n_components=args.layers[-1], **net, **nmf_params
        ).fit(im, lab),
        "random": lambda im, lab: RandomScores(lab.n_labels, seed),
    }
    return {name: fitters[name] for name in args.models}


class RandomScores:
    """Chance level: uniform scores, independent of the image."""

    def __init__(self, n_labels: int, seed: int) -> None:
        self.n_labels, self.seed = n_labels, seed

    def predict_scores(self, images: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.random((len(images), self.n_labels))


def rerank(scores: np.ndarray, propensity: np.ndarray, alpha: float) -> np.ndarray:
    """Propensity re-ranking: ``score_j * propensity_j ** -alpha`` (scores are >= 0)."""
    return scores * (propensity[None, :] ** -alpha)


def pick_alpha(Y: Any, scores: np.ndarray, propensity: np.ndarray, slack: float = 0.005) -> float:
    """The alpha with the best PSP@5 whose P@5 is within ``slack`` of alpha = 0."""
    figures = [
        evaluate_ranking(Y, rerank(scores, propensity, a), ks=(5,), propensity=propensity)
        for a in ALPHAS
    ]
    allowed = [i for i, f in enumerate(figures) if f["p@5"] >= figures[0]["p@5"] - slack]
    return ALPHAS[max(allowed, key=lambda i: figures[i]["psp@5"])]


def make_data(args: argparse.Namespace, seed: int) -> tuple[Any, list[np.ndarray]]:
    """The generated data set and its (train, val, test) rows. Digit scenes: the val and
    test scenes are drawn from held-out scans (handwriting no training scene shows)."""
    sizes = split_sizes(args)
    if args.preset not in DIGIT_PRESETS:
        ds = generate_dishes(args.preset, seed=seed, n_images=sum(sizes), **_size_override(args))
        return ds, split_rows(sizes, seed)
    n_train, n_held = sizes[0], sizes[1] + sizes[2]
    ds = generate_digit_scenes(args.preset, seed=seed, n_images=sum(sizes),
                               held_out_rows=n_held, **_size_override(args))  # fmt: skip
    val, test = split_rows(sizes[1:], seed)
    return ds, [np.arange(n_train), val + n_train, test + n_train]


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Generate, split, train, evaluate one seed; returns per-model figures."""
    ds, (train, val, test) = make_data(args, seed)
    space = ds.label_space
    propensity = propensities(space.matrix[train])

    def evaluate(rows: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return evaluate_ranking(space.matrix[rows], scores, ks=(1, 3, 5), propensity=propensity)

    out: dict[str, Any] = {"tail_curve": {}}
    layers = args.layers
    if layers is None:  # what a user gets: the sizes chosen on the training labels
        choice = choose_layer_sizes(space.matrix[train], seed=seed)
        layers, out["code_size"] = choice.layer_sizes, choice.metrics()
        print(f"seed {seed}: code size {layers}, table {choice.table}", file=sys.stderr)
    out["layers"] = [int(k) for k in layers]
    for name, fit in model_fitters(
        argparse.Namespace(**{**vars(args), "layers": layers}), seed
    ).items():
        start = time.perf_counter()
        model = fit(ds.images[train], space.subset(train))
        seconds = time.perf_counter() - start
        print(f"seed {seed}: trained {name:<17} in {seconds:6.1f} s", file=sys.stderr)
        scores = model.predict_scores(ds.images[test])
        if name == "two_step_tail":
            alpha = pick_alpha(space.matrix[val], model.predict_scores(ds.images[val]), propensity)
            curve = {a: evaluate(test, rerank(scores, propensity, a)) for a in ALPHAS}
            out["tail_curve"] = {str(a): {k: f[k] for k in REPORTED} for a, f in curve.items()}
            out["tail_alpha"] = alpha
            scores = rerank(scores, propensity, alpha)
        out[name] = {**{k: evaluate(test, scores)[k] for k in REPORTED}, "train_seconds": seconds}
        if name == "two_step":
            true_groups = [ds.label_groups[label] for label in space.vocabulary]
            groups = assign_groups_from_weights(model.autoencoder.H_[0])
            out["hierarchy_nmi"] = hierarchy_nmi(groups.tolist(), true_groups)
    out["n_labels"] = space.n_labels
    out["image_size"] = int(ds.images.shape[1])
    return out


def mean_std(values: Sequence[float], key: str, digits: int = 4) -> dict[str, float]:
    """``{key: mean}`` plus ``{key_std: std}`` when there is more than one value."""
    result = {key: round(float(np.mean(values)), digits)}
    if len(values) > 1:
        result[f"{key}_std"] = round(float(np.std(values, ddof=1)), digits)
    return result


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and spread) over seeds of every figure, in the JSON layout."""
    result: dict[str, Any] = {}
    for name in (m for m in MODELS if m in runs[0]):
        result[name] = {}
        for key in (*REPORTED, "train_seconds"):
            result[name].update(mean_std([run[name][key] for run in runs], key))
    if "two_step" in runs[0]:
        result.update(mean_std([run["hierarchy_nmi"] for run in runs], "hierarchy_nmi"))
    if "two_step_tail" not in runs[0]:
        return result
    result["two_step_tail"]["alpha"] = [run["tail_alpha"] for run in runs]
    result["tail_curve"] = {
        alpha: {key: round(float(np.mean([r["tail_curve"][alpha][key] for r in runs])), 4)
                for key in REPORTED}
        for alpha in runs[0]["tail_curve"]
    }  # fmt: skip
    return result


def target_checks(result: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, computed from the means (the spread is reported beside them);
    only those whose models ran. ``two_step_p@5_minus_nmf_per_seed``: the paired gaps."""
    if "two_step" not in result:
        return {}
    plain = result["two_step"]
    checks: dict[str, Any] = {"hierarchy_nmi_at_least_0.6": result["hierarchy_nmi"] >= 0.6}
    if "nmf" in result:
        checks["two_step_p@5_minus_nmf"] = round(plain["p@5"] - result["nmf"]["p@5"], 4)
        gaps = [round(r["two_step"]["p@5"] - r["nmf"]["p@5"], 4) for r in runs]
        checks["two_step_p@5_minus_nmf_per_seed"] = gaps
    for name in ("two_step_tail", "two_step_bce"):
        if name in result:
            other = result[name]
            gain = other["psp@5"] / max(plain["psp@5"], 1e-12) - 1
            checks[f"{name}_psp@5_relative_gain"] = round(gain, 4)
            checks[f"{name}_p@5_change"] = round(other["p@5"] - plain["p@5"], 4)
    return checks


def paired_seeds(runs: list[dict[str, Any]], other: str) -> dict[str, Any]:
    """two_step against ``other`` seed by seed: both figures, the gaps (two_step - other),
    the mean gap, its standard error (std of the gaps / sqrt(seeds)) and the seeds won."""
    out: dict[str, Any] = {}
    for key in PAIRED_FIGURES:
        mine = [run["two_step"][key] for run in runs]
        theirs = [run[other][key] for run in runs]
        gaps = [a - b for a, b in zip(mine, theirs, strict=True)]
        stderr = float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
        out[key] = {
            "two_step": [round(v, 4) for v in mine], other: [round(v, 4) for v in theirs],
            "gap": [round(g, 4) for g in gaps], "gap_mean": round(float(np.mean(gaps)), 4),
            "gap_stderr": None if stderr is None else round(stderr, 4),
            "two_step_ahead": sum(g > 0 for g in gaps),
        }  # fmt: skip
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every seed, aggregated; returns the JSON-ready result."""
    runs = [run_seed(args, seed) for seed in args.seeds]
    result = aggregate(runs)
    result["targets"] = target_checks(result, runs)
    if "two_step" in result:
        pairs = {o: paired_seeds(runs, o) for o in PAIRED if o in result}
        result["paired"] = {f"two_step_vs_{o}": p for o, p in pairs.items()}
    n_train, n_val, n_test = split_sizes(args)
    result["setup"] = {
        "preset": args.preset, "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "n_labels": runs[0]["n_labels"], "image_size": runs[0]["image_size"],
        "base": args.base, "epochs": args.epochs, "layers": [run["layers"] for run in runs],
        "seeds": list(args.seeds), "tail_power": args.tail_power, "models": list(args.models),
        "code_size": [run.get("code_size") for run in runs],
    }  # fmt: skip
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"{'model':<18}" + "".join(f"{key:>16}" for key in REPORTED))
    for name in (m for m in MODELS if m in result):
        row = result[name]
        cells = [f"{row[k]:.4f}" + (f"±{row[k + '_std']:.3f}" if k + "_std" in row else "")
                 for k in REPORTED]  # fmt: skip
        print(f"{name:<18}" + "".join(f"{cell:>16}" for cell in cells))
    if "hierarchy_nmi" in result:
        print(f"hierarchy NMI (H_1 vs true groups): {result['hierarchy_nmi']:.4f}")
    if "tail_curve" not in result:
        return
    print("tail re-ranking curve (test): " + ", ".join(
        f"alpha {a}: P@5 {f['p@5']:.4f} PSP@5 {f['psp@5']:.4f}"
        for a, f in result["tail_curve"].items()
    ))  # fmt: skip


def print_paired(result: dict[str, Any]) -> None:
    """One table per pair: a row per figure and model, a column per seed."""
    for pair, figures in result.get("paired", {}).items():
        other = pair.removeprefix("two_step_vs_")
        seeds = result["setup"]["seeds"]
        print(f"paired seeds, two_step vs {other}:")
        print(f"{'':<22}" + "".join(f"{s:>8}" for s in seeds) + f"{'mean':>9}")
        for key, row in figures.items():
            for name in ("two_step", other, "gap"):
                values = row[name]
                fmt = "{:>+8.4f}" if name == "gap" else "{:>8.4f}"
                cells = "".join(fmt.format(v) for v in values)
                print(f"{key + ' ' + name:<22}{cells}{fmt.format(float(np.mean(values))):>9}")
            err = "" if row["gap_stderr"] is None else f", standard error {row['gap_stderr']}"
            print(f"{key}: two_step ahead on {row['two_step_ahead']} of {len(seeds)} seeds{err}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print_table(result)
    print_paired(result)
    print(json.dumps(result, sort_keys=True))
    return result


def _size_override(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.image_size is None else {"image_size": args.image_size}


if __name__ == "__main__":
    main()
