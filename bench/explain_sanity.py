"""Sanity checks of the explainers themselves (issue 15 item 4), three parts.

1. Planted evidence (``bench/sanity_models.py``): models whose one output depends, by
   construction, only on known pixels: ``region_cnn`` (a fixed CNN reading one box) on
   generated dishes, and ``mask_energy`` (a score computed from the ground-truth mask
   of each image's largest visible label). Every method's pointing game and mass in
   mask against that evidence. A method that misses here is wrong about the model,
   not misled by it. Goals: pointing >= 0.95 for LIME, KernelSHAP and occlusion, mass
   in mask >= 0.6.
2. Model-parameter randomisation (Adebayo et al., 2018): a two-step model trained on
   generated dishes, and a copy with its top ``--randomise-layers`` learned layers
   re-initialised. Per method, the Spearman rank correlation between the two heatmaps
   of each (image, label), averaged. An explanation that survives the randomisation
   (high correlation) shows the image, not the model. Goal: <= 0.3; the methods above
   it are reported as failing, as the literature does (``spearman`` on the maps as the
   methods return them, ``spearman_abs`` on their magnitudes).
3. The trained model: pointing game, mass in mask, deletion and insertion AUC per
   method against the labels' masks (``bench/explain_quality.py``'s targets and
   scores).

Every explainer comes from ``xmlcore.methods.make_explainer``, the service's own
door, for the planted models as for the trained one. Run:
``nice -n 10 .venv/bin/python bench/explain_sanity.py --quick`` (a few minutes on 2
CPU cores). The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from explain_quality import SCORES, choose_targets, layer_sizes
from sanity_models import (
    KerasExplainable,
    MaskEnergy,
    RegionCNN,
    box_region,
    reinitialise_top,
    snap_to_segments,
)
from scipy.stats import spearmanr

from xmlcore.datasets import generate_dishes
from xmlcore.errors import ExplainError
from xmlcore.evaluate import (
    curve_auc,
    evaluate_explanations,
    mass_in_mask,
    perturbation_curves,
    pointing_game,
)
from xmlcore.explain import SlicSegmenter
from xmlcore.explain.gradient_methods import last_conv_layer
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.methods import ExplainableModel, make_explainer
from xmlcore.model import train_two_step

PERTURBATION = ("lime", "kernel_shap", "occlusion")
GRADIENT = ("integrated_gradients", "smoothgrad", "input_x_gradient", "gradcam")
GOALS = {"pointing_game": 0.95, "mass_in_mask": 0.6, "spearman": 0.3}
QUICK = {"n_planted": 12, "n_explain": 12, "samples": 400, "epochs": 8, "ae_epochs": 150}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--n-planted", type=int, default=40, help="images per planted model")
    parser.add_argument("--n-explain", type=int, default=40, help="trained-model images")
    parser.add_argument("--samples", type=int, default=1000, help="LIME and KernelSHAP")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ae-epochs", type=int, default=300)
    parser.add_argument("--randomise-layers", type=int, default=2)
    parser.add_argument("--methods", default=",".join(PERTURBATION + GRADIENT))
    parser.add_argument(
        "--occlusion-window", default=None, metavar="PATCH,STRIDE",
        help="occlusion's window and step in pixels (default: an eighth and a sixteenth "
        "of the side, 8,4 at 64 px); a finer one measures how much of its mass in mask "
        "is the window's resolution",
    )  # fmt: skip
    parser.add_argument(
        "--planted-only", action="store_true", help="part 1 only (no model is trained)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def method_params(method: str, size: int, args: Any, *, planted: bool = False) -> dict[str, Any]:
    """The service's defaults, except the sample budget, an occlusion window scaled to
    the image (an eighth of the side, as ``bench/explain_quality.py``), and on planted
    models integrated gradients from each image's mean colour: the absence the planted
    models and the perturbation methods share (from black, the attributions answer
    "compared with a black image", another question)."""
    return {
        "lime": {"num_samples": args.samples, "seed": args.seed},
        "kernel_shap": {"n_samples": args.samples, "seed": args.seed},
        "occlusion": _occlusion_window(size, args.occlusion_window),
        "smoothgrad": {"seed": args.seed},
        "integrated_gradients": {"baseline": "mean"} if planted else {},
    }.get(method, {})


def _occlusion_window(size: int, given: str | None) -> dict[str, int]:
    if given:
        patch, stride = (int(v) for v in given.split(","))
        return {"patch": patch, "stride": stride}
    return {"patch": max(1, size // 8), "stride": max(1, size // 16)}


def explain(
    model: ExplainableModel,
    method: str,
    images: np.ndarray,
    targets: list[TargetInfo],
    args: Any,
    **options: Any,
) -> list[Explanation] | None:
    """One explanation per image (its target), or None where the method does not apply
    (Grad-CAM on a model without a convolution). ``options`` go to ``method_params``."""
    if method == "gradcam" and not _has_conv(model):
        return None
    params = method_params(method, images.shape[1], args, **options)
    explainer = make_explainer(method, model, params)
    return [row[0] for row in explainer.explain(images, [[t] for t in targets])]


def _has_conv(model: ExplainableModel) -> bool:
    keras_model = model.keras_model()
    try:
        return keras_model is not None and bool(last_conv_layer(keras_model))
    except ExplainError:
        return False


def localisation(found: list[Explanation], evidence: list[np.ndarray]) -> dict[str, float]:
    pairs = list(zip((e.heatmap for e in found), evidence, strict=True))
    return {
        "pointing_game": round(float(np.mean([pointing_game(h, m) for h, m in pairs])), 4),
        "mass_in_mask": round(float(np.mean([mass_in_mask(h, m) for h, m in pairs])), 4),
    }


def planted(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    data = generate_dishes(
        "small", seed=args.seed + 1, n_images=args.n_planted, image_size=args.size
    )
    size = args.size
    box = (size // 8, size // 2, size // 2, 7 * size // 8)  # 3/8 x 3/8 of the image, off-centre
    column = [TargetInfo(column=0, kind="latent", index=0, name="planted")]
    # Both planted models read superpixel-snapped regions (sanity_models.snap_to_segments
    # says why), of the default segmenter's superpixels, so one model per image.
    segments = [SlicSegmenter()(img) for img in data.images]
    models = {
        "region_cnn": [RegionCNN(box_region(seg, box), seed=args.seed) for seg in segments],
        "mask_energy": [
            MaskEnergy(img, snap_to_segments(max(m.values(), key=lambda a: int(a.sum())), seg))
            for img, m, seg in zip(data.images, data.masks, segments, strict=True)
            if m  # the largest visible label of each image
        ],
    }
    out: dict[str, Any] = {name: {} for name in models}
    for name, per_image in models.items():
        for method in methods:
            rows = [explain(model, method, data.images[i : i + 1], column, args, planted=True)
                    for i, model in enumerate(per_image)]  # fmt: skip
            found = [r[0] for r in rows if r is not None]
            evidence = [m.evidence for m, r in zip(per_image, rows, strict=True) if r is not None]
            out[name][method] = localisation(found, evidence) if found else None
            print(f"planted {name} {method}: done", file=sys.stderr)
    out["evidence_share"] = {
        name: round(float(np.mean([m.evidence.mean() for m in per_image])), 4)
        for name, per_image in models.items()
    }
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two heatmaps; 0 where either is constant (no ranking)."""
    x, y = a.ravel(), b.ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def trained_model(args: argparse.Namespace) -> tuple[Any, np.ndarray, list[TargetInfo], list]:
    ds = generate_dishes("small", seed=args.seed, image_size=args.size)
    order = np.random.default_rng(args.seed).permutation(ds.n_images)
    n_test = max(1, ds.n_images // 5)
    train, test = np.sort(order[n_test:]), np.sort(order[:n_test])[: args.n_explain]
    model = train_two_step(
        ds.images[train], ds.label_space.subset(train), epochs=args.epochs,
        layer_sizes=layer_sizes(ds.label_space.n_labels, len(set(ds.label_groups.values()))),
        ae_params={"epochs": args.ae_epochs}, seed=args.seed,
    )  # fmt: skip
    rows, targets, masks = choose_targets(model, ds.images[test], [ds.masks[i] for i in test])
    return model, ds.images[test][rows], targets, masks


def median_aucs(model: Any, images: np.ndarray, found: list[Explanation]) -> dict[str, float]:
    """Medians of the per-image deletion and insertion AUCs (the curves of
    ``evaluate_explanations``). The means can leave 0..1 by far: a curve is normalised
    by f(original) - f(all-fill), and a label whose score barely changes when the whole
    image is filled makes that difference tiny and one image's AUC huge; the median is
    not moved by such an image."""
    out = {}
    for mode in ("deletion", "insertion"):
        x, y = perturbation_curves(
            mode, model.device_predictor(), images, [e.heatmap for e in found],
            [e.target.column for e in found],
        )  # fmt: skip
        aucs = [curve_auc(xi, yi) for xi, yi in zip(x, y, strict=True)]
        out[f"{mode}_auc_median"] = round(float(np.nanmedian(aucs)), 4)
    return out


def on_trained(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    model, images, targets, masks = trained_model(args)
    train_seconds = time.perf_counter() - start
    randomised = KerasExplainable(
        reinitialise_top(model.keras_model(), args.randomise_layers, seed=args.seed)
    )
    quality: dict[str, Any] = {}
    randomisation: dict[str, Any] = {}
    for method in methods:
        found = explain(model, method, images, targets, args)
        other = explain(randomised, method, images, targets, args)
        assert found is not None and other is not None
        scores = evaluate_explanations(model.device_predictor(), images, found, masks)
        quality[method] = {key: round(scores[key], 4) for key in SCORES}
        quality[method].update(median_aucs(model, images, found))
        signed = [spearman(a.heatmap, b.heatmap) for a, b in zip(found, other, strict=True)]
        magnitude = [spearman(np.abs(a.heatmap), np.abs(b.heatmap))
                     for a, b in zip(found, other, strict=True)]  # fmt: skip
        randomisation[method] = {
            "spearman": round(float(np.mean(signed)), 4),
            "spearman_abs": round(float(np.mean(magnitude)), 4),
        }
        print(f"trained {method}: {randomisation[method]}", file=sys.stderr)
    setup = {"n_explained": len(images), "train_seconds": round(train_seconds, 1),
             "mask_share": round(float(np.mean([m.mean() for m in masks])), 4)}  # fmt: skip
    return {"trained": quality, "randomisation": randomisation, "trained_setup": setup}


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    """Which goals each method meets (None: not measured)."""
    out: dict[str, Any] = {}
    for method, row in result["randomisation"].items():
        per = {"randomisation": row["spearman"] <= GOALS["spearman"]}
        for name in ("region_cnn", "mask_energy"):
            scores = result["planted"][name].get(method)
            if scores is not None:
                per[f"{name}_pointing"] = scores["pointing_game"] >= GOALS["pointing_game"]
                per[f"{name}_mass"] = scores["mass_in_mask"] >= GOALS["mass_in_mask"]
        out[method] = per
    out["randomisation_fails"] = sorted(
        m for m, row in result["randomisation"].items() if row["spearman"] > GOALS["spearman"]
    )
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    start = time.perf_counter()
    result: dict[str, Any] = {"planted": planted(args, methods)}
    result["setup"] = {
        "size": args.size, "n_planted": args.n_planted, "samples": args.samples,
        "epochs": args.epochs, "randomise_layers": args.randomise_layers, "seed": args.seed,
        "occlusion": _occlusion_window(args.size, args.occlusion_window),
    }  # fmt: skip
    for part in ("region_cnn", "mask_energy"):
        for method, row in result["planted"][part].items():
            print(f"{part:<12} {method:<22} {row}")
    if args.planted_only:
        result["setup"]["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result, sort_keys=True))
        return result
    result.update(on_trained(args, methods))
    result["goals"] = GOALS
    result["verdicts"] = verdicts(result)
    result["setup"]["seconds"] = round(time.perf_counter() - start, 1)
    for method, row in result["randomisation"].items():
        print(f"randomisation {method:<22} {row}   trained: {result['trained'][method]}")
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
