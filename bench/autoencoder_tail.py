"""Tail labels: plain MSE vs the propensity-weighted loss of the deep NN autoencoder.

Protocol: a planted label matrix with power-law label frequencies (co-occurring label
groups with Zipf popularity, plus Zipf-distributed extra labels) is split into train and
held-out rows. Each autoencoder is fitted on the train rows; every held-out row is
encoded and decoded (``inverse_transform(transform(V))``, what the decoder does
downstream) and its labels ranked. Reported per loss: P@5, PSP@5 (Jain et al. 2016,
normalised by the best achievable) and the share of tail labels (bottom half by train
frequency) that reach any held-out top-5. For scale, the same figures for the best
UNCONSTRAINED linear decoder of the same rank (truncated SVD projection ``V U U^T``, plain
and with propensity-weighted columns): no loss on a rank-k_L tied decoder can be expected
to beat that ceiling by much.

Run: ``.venv/bin/python bench/autoencoder_tail.py [--rows 3000 --labels 600 --seed 0]``.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from xmlcore.autoencoder import DeepNonNegativeAutoencoder
from xmlcore.metrics import coverage_at_k, precision_at_k, propensities, psp_at_k


def planted_power_law(
    n: int, p: int, n_groups: int, seed: int, zipf: float = 1.1
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrix (n, p) and each label's group (-1: not in a group, extras only)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(p)
    group_size = max(2, p // (2 * n_groups))
    groups = [order[g * group_size : (g + 1) * group_size] for g in range(n_groups)]
    group_of = np.full(p, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    group_pop = 1.0 / np.arange(1, n_groups + 1) ** zipf
    label_pop = 1.0 / np.arange(1, p + 1) ** zipf
    label_pop = label_pop[np.argsort(order)]
    V = np.zeros((n, p), dtype=np.float32)
    for i in range(n):
        for g in rng.choice(
            n_groups, size=rng.integers(1, 3), replace=False, p=group_pop / group_pop.sum()
        ):
            members = groups[g]
            V[i, members[rng.random(members.size) < 0.8]] = 1.0
        extras = rng.choice(
            p, size=rng.integers(0, 4), replace=False, p=label_pop / label_pop.sum()
        )
        V[i, extras] = 1.0
    return V, group_of


def svd_scores(V_train: np.ndarray, V_test: np.ndarray, rank: int, power: float) -> np.ndarray:
    """Rank-``rank`` projection learned on propensity-weighted columns (power 0: plain)."""
    w = (1.0 / propensities(V_train)) ** power
    U = np.linalg.svd(V_train * w, full_matrices=False)[2][:rank].T
    return (V_test * w) @ U @ U.T / w


def evaluate(scores: np.ndarray, V_test: np.ndarray, V_train: np.ndarray) -> dict:
    counts = V_train.sum(axis=0)
    tail = np.argsort(counts, kind="stable")[: counts.size // 2]
    shown = np.unique(np.argsort(-scores, axis=1, kind="stable")[:, :5])
    return {
        "p_at_5": precision_at_k(V_test, scores, 5),
        "psp_at_5": psp_at_k(V_test, scores, 5, propensities(V_train)),
        "coverage_at_5": coverage_at_k(scores, 5),
        "tail_share_in_top5": float(np.isin(tail, shown).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--labels", type=int, default=600)
    parser.add_argument("--groups", type=int, default=60)
    parser.add_argument("--layers", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--tail-powers", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    V, _ = planted_power_law(args.rows, args.labels, args.groups, args.seed)
    n_train = int(0.8 * args.rows)
    V_train, V_test = V[:n_train], V[n_train:]
    runs = [("mse", 0.0)] + [("propensity_mse", t) for t in args.tail_powers]
    results = {}
    for loss, power in runs:
        start = time.perf_counter()
        ae = DeepNonNegativeAutoencoder(
            layer_sizes=tuple(args.layers), loss=loss, tail_power=power, seed=args.seed
        ).fit(V_train)
        row = evaluate(ae.inverse_transform(ae.transform(V_test)), V_test, V_train)
        row["epochs_run"] = len(ae.history_["loss"])
        row["fit_seconds"] = round(time.perf_counter() - start, 2)
        name = loss if loss == "mse" else f"{loss}(tail_power={power:g})"
        results[name] = row
        print(name, {k: round(v, 4) for k, v in row.items()})
    for power in (0.0, 1.0):
        name = f"svd_rank{args.layers[-1]}_ceiling(power={power:g})"
        results[name] = evaluate(
            svd_scores(V_train, V_test, args.layers[-1], power), V_test, V_train
        )
        print(name, {k: round(v, 4) for k, v in results[name].items()})
    base = results["mse"]
    summary = {
        name: {
            "psp_at_5_rel_gain": r["psp_at_5"] / max(base["psp_at_5"], 1e-12) - 1.0,
            "p_at_5_change": r["p_at_5"] - base["p_at_5"],
        }
        for name, r in results.items()
        if name != "mse"
    }
    print(json.dumps({"data": vars(args), "results": results, "vs_mse": summary}))


if __name__ == "__main__":
    main()
