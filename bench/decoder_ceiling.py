"""The decoders' ceiling: how well each label compression ranks labels from PERFECT codes.

The two-step model predicts a code from the image and decodes it; whatever the CNN does,
it cannot rank labels better than the decoder does from the best code. Protocol, per
seed: the same generated dishes and train / test split as ``bench/xml_quality.py``;
each compression is fitted on the train label matrix; every test row's TRUE labels are
encoded and decoded (``inverse_transform(transform(V))`` for the autoencoders,
``transform(V) @ components_`` for NMF) and ranked. Reported: P@5, PSP@5 (train
propensities), coverage@5, and PSP@5 after the best propensity re-ranking
``score * propensity ** -alpha`` on the test rows themselves (an upper bound for
re-ranking). Compared at the same k (``default_layer_sizes(p)``):

- ``ae_mse``: the paper's autoencoder loss;
- ``ae_propensity_mse``: propensity-weighted columns (``tail_power`` 1);
- ``ae_bce``: the logistic autoencoder (per-label bias + sigmoid, cross-entropy);
- ``nmf``: sklearn NMF, Frobenius loss.

Run: ``.venv/bin/python bench/decoder_ceiling.py [--preset small --seeds 0 1 2]`` (about
a minute of CPU per seed on the small preset). The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from xmlcore.autoencoder import DeepNonNegativeAutoencoder, default_layer_sizes
from xmlcore.datasets import PRESETS, sample_recipes
from xmlcore.metrics import evaluate_ranking, propensities

ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
FIGURES = ("p@5", "psp@5", "coverage@5", "psp@5_best_rerank")
Decoder = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (V_train, V_test) -> test scores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="sets n_train")
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--ae-epochs", type=int, default=200)
    parser.add_argument("--bce-learning-rate", type=float, default=0.03)
    return parser.parse_args(argv)


def decoders(args: argparse.Namespace, seed: int) -> dict[str, Decoder]:
    """name -> fit-on-train, score-the-test-rows function, every one at the same k."""
    layers = tuple(args.layers)

    def autoencoder(loss: str, **params: Any) -> Decoder:
        def run(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            ae = DeepNonNegativeAutoencoder(
                layer_sizes=layers, loss=loss, epochs=args.ae_epochs, seed=seed, **params
            ).fit(train)
            return ae.inverse_transform(ae.transform(test))

        return run

    def nmf(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = NMF(layers[-1], init="nndsvda", max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train)
            return model.transform(test) @ model.components_

    return {
        "ae_mse": autoencoder("mse"),
        "ae_propensity_mse": autoencoder("propensity_mse"),
        "ae_bce": autoencoder("bce", learning_rate=args.bce_learning_rate),
        "nmf": nmf,
    }


def label_matrices(args: argparse.Namespace, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) 0/1 label matrices; the label sets alone (no pixels are drawn)."""
    n_preset = PRESETS[args.preset].n_images
    n_train = n_preset - max(1, round(n_preset * args.test_fraction))
    book = sample_recipes(args.preset, seed=seed, n_images=n_train + args.n_test)
    V = book.membership.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(V))
    return V[order[:n_train]], V[order[n_train:]]


def figures(test: np.ndarray, scores: np.ndarray, propensity: np.ndarray) -> dict[str, float]:
    Y = sp.csr_matrix(test)
    base = evaluate_ranking(Y, scores, ks=(5,), propensity=propensity)
    reranked = [
        evaluate_ranking(Y, scores * propensity**-a, ks=(5,), propensity=propensity)["psp@5"]
        for a in ALPHAS
    ]
    return {**{k: base[k] for k in FIGURES[:3]}, "psp@5_best_rerank": max(reranked)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.layers is None:
        args.layers = list(default_layer_sizes(PRESETS[args.preset].n_labels))
    per_seed: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        train, test = label_matrices(args, seed)
        propensity = propensities(sp.csr_matrix(train))
        for name, decode in decoders(args, seed).items():
            row = figures(test, decode(train, test), propensity)
            per_seed.setdefault(name, []).append(row)
            print(f"seed {seed} {name:<18} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()),
                  file=sys.stderr)  # fmt: skip
    result: dict[str, Any] = {
        name: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in FIGURES}
        for name, rows in per_seed.items()
    }
    result["setup"] = {"preset": args.preset, "seeds": list(args.seeds),
                       "layers": list(args.layers), "n_test": args.n_test}  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print(f"{'decoder':<20}" + "".join(f"{k:>20}" for k in FIGURES))
    for name in (n for n in result if n != "setup"):
        print(f"{name:<20}" + "".join(f"{result[name][k]:>20.4f}" for k in FIGURES))
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
