"""LIME stability: top-5 agreement with a 5,000-sample reference, per sampler and budget.

For every image the target is the model's top label. The reference is the top-5
superpixel SET of a 5,000-sample ``lime``-sampler run with another seed (it shares no
masks with the runs scored). Scored, for each sampler (``xmlcore.explain.samplers``) at
250, 400, 500 and 1,000 samples, and with adaptive stopping (``ADAPTIVE_RULES``):

- ``agreement``: share of images whose top-5 set equals the reference's;
- ``overlap``: mean share of the reference's top 5 found;
- ``stability``: mean ``stability@5`` the results report (bootstrap of their own
  samples), and how it tracks the truth across images: Pearson correlation of
  ``stability@5`` with ``overlap`` and with ``agreement`` (0/1), and the agreement of
  the images whose ``stability@5`` is >= 0.9 against the others.

Goal: >= 0.90 agreement at <= 400 forward passes per image.

Model: the two-step model trained on ``generate_dishes`` as in ``bench/lime_adaptive.py``
(400 training images of seed 1, 15 epochs); explained images come from seed 0.

Usage: ``python bench/explain_stability.py [--quick] [--images N]``; last line JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from lime_adaptive import SIZE, trained_two_step

from xmlcore.datasets import generate_dishes
from xmlcore.explain import AdaptiveSampling, LimeExplainer
from xmlcore.explain.samplers import SAMPLERS

BUDGETS = (250, 400, 500, 1000)  # 400: the goal's budget
REFERENCE_SAMPLES = 5000
GOAL = {"agreement": 0.90, "forward_passes": 400}
ADAPTIVE_RULES = {
    "separation": AdaptiveSampling(),  # today's default, capped at 1,000
    # stop at a bootstrap stability@5 of 0.98, never past the goal's 400 samples
    "stability_0.98_cap400": AdaptiveSampling(
        criterion="stability", min_stability=0.98, max_samples=400
    ),
}


def run(predict: Any, images: np.ndarray, targets: list[list[int]], **kw: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = LimeExplainer(predict, **kw).explain(images, targets)
    return {
        "sets": [frozenset(row[0].top_segments[:5]) for row in result],
        "stability": np.array([row[0].metrics["stability@5"] for row in result]),
        "samples": np.array([row[0].num_samples for row in result]),
        "seconds": time.perf_counter() - start,
    }


def score(found: dict[str, Any], reference: list[frozenset[int]]) -> dict[str, Any]:
    same = np.array([a == b for a, b in zip(found["sets"], reference, strict=True)], float)
    overlap = np.array([len(a & b) / 5 for a, b in zip(found["sets"], reference, strict=True)])
    stab = found["stability"]
    confident = stab >= 0.9
    return {
        "agreement": round(float(same.mean()), 3),
        "overlap": round(float(overlap.mean()), 3),
        "stability": round(float(stab.mean()), 3),
        "corr_stability_overlap": _corr(stab, overlap),
        "corr_stability_agreement": _corr(stab, same),
        "agreement_if_stability_ge_0.9": _mean_or_none(same[confident]),
        "agreement_if_stability_lt_0.9": _mean_or_none(same[~confident]),
        "share_stability_ge_0.9": round(float(confident.mean()), 3),
        "mean_samples": round(float(found["samples"].mean()), 1),
        "seconds": round(found["seconds"], 2),
    }


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 3)


def _mean_or_none(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 3) if len(values) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 images, small model")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--no-adaptive", action="store_true")
    args = parser.parse_args()
    n_images = args.images or (12 if args.quick else 60)
    samplers = args.samplers.split(",")
    predict, latent_dim = trained_two_step(120 if args.quick else 400, 5 if args.quick else 15)
    images = generate_dishes("tiny", seed=0, n_images=n_images, image_size=SIZE).images
    outputs = np.asarray(predict(images))
    targets = [[latent_dim + int(np.argmax(row[latent_dim:]))] for row in outputs]
    ref = run(predict, images, targets, num_samples=REFERENCE_SAMPLES, seed=12345)
    reference = ref["sets"]
    table: dict[str, dict[str, Any]] = {}
    for sampler in samplers:
        for budget in BUDGETS:
            found = run(predict, images, targets, num_samples=budget, sampler=sampler)
            table[f"{sampler}@{budget}"] = score(found, reference)
            print(f"{sampler}@{budget}", json.dumps(table[f"{sampler}@{budget}"]), flush=True)
        if args.no_adaptive:
            continue
        for name, rule in ADAPTIVE_RULES.items():
            cap = rule.max_samples or 1000
            found = run(predict, images, targets, num_samples=cap, sampler=sampler, adaptive=rule)
            key = f"{sampler}+adaptive_{name}"
            table[key] = score(found, reference)
            print(key, json.dumps(table[key]), flush=True)
    met = {
        key: row
        for key, row in table.items()
        if row["agreement"] >= GOAL["agreement"]
        and row["mean_samples"] + 1 <= GOAL["forward_passes"]
    }
    best_at_goal_budget = max(
        (row["agreement"], key)
        for key, row in table.items()
        if row["mean_samples"] + 1 <= GOAL["forward_passes"]
    )
    print(
        json.dumps(
            {
                "runs": table,
                "goal": GOAL,
                "goal_met_by": sorted(met),
                "best_within_goal_budget": {
                    "run": best_at_goal_budget[1],
                    "agreement": best_at_goal_budget[0],
                },
                "reference_seconds": round(ref["seconds"], 2),
                "reference_stability": round(float(ref["stability"].mean()), 3),
                "n_images": n_images,
                "image_size": SIZE,
                "model": "two-step model trained on generate_dishes (bench/lime_adaptive.py)",
            }
        )
    )


if __name__ == "__main__":
    main()
