"""Choose the autoencoder's layer sizes from the training labels (issue 12, item 6).

Halving the vocabulary (``default_layer_sizes``) is blind: on 14 labels it gave a code
of 3 units that could not decode the label sets (held-out P@3 0.79 from images where a
linear one-vs-rest got 0.92). The two-step model can never rank labels better than its
decoder does from the TRUE code (the "decoder ceiling", ``bench/decoder_ceiling.py``),
so the sizes are chosen by that ceiling:

1. candidates: ``default_layer_sizes(p)`` scaled by 1/2, 1, 2 and 4 (first layer below
   p, each layer narrower than the one before), a few widths from compressive to wide;
2. each candidate's autoencoder is fitted briefly (``epochs``, early stopping) on the
   training part of a row sample (at most ``max_rows``, so a big V costs what a small
   one does) and scored on the held-out rows: P@k of ``inverse_transform(transform(V))``;
3. the choice is the narrowest candidate whose ceiling is within ``tolerance`` of the
   best candidate's, and whose code is at least ``ceil(log2 p)`` units wide: a code must
   be able to tell the p labels apart, and an index into p labels needs log2(p) bits
   (a unit that is on or off carries one). If no candidate clears the floor (tiny p),
   the best one is taken.

``k`` defaults to the typical number of labels per row (the floor of the mean, 1..5):
P@k past the row's own label count measures the count, not the ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmlcore.autoencoder import DeepNonNegativeAutoencoder, check_label_matrix, default_layer_sizes
from xmlcore.errors import ConfigError
from xmlcore.metrics import precision_at_k

SCALES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_TOLERANCE = 0.01
METRIC_PREFIX = "decoder_ceiling"


@dataclass(frozen=True)
class CodeSizeChoice:
    """The chosen ``layer_sizes`` and the table it was chosen from.

    ``table``: per candidate ``{"layer_sizes", "ceiling", "eligible"}``, narrowest
    first; ``ceiling`` is held-out P@``k`` of the decoded true labels.
    """

    layer_sizes: tuple[int, ...]
    k: int
    tolerance: float
    floor: int
    best: float
    n_rows: int
    table: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ceiling(self) -> float:
        """The chosen candidate's ceiling."""
        return next(r["ceiling"] for r in self.table if r["layer_sizes"] == self.layer_sizes)

    def metrics(self) -> dict[str, float]:
        """Flat figures for ``ModelMetadata.metrics``: the choice, its ceiling, the best
        ceiling, and every candidate's as ``decoder_ceiling[64-16]``."""
        out = {
            "code_size_chosen": 1.0,
            f"{METRIC_PREFIX}_k": float(self.k),
            f"{METRIC_PREFIX}": round(self.ceiling, 4),
            f"{METRIC_PREFIX}_best": round(self.best, 4),
            f"{METRIC_PREFIX}_tolerance": self.tolerance,
            f"{METRIC_PREFIX}_rows": float(self.n_rows),
            "code_size_floor": float(self.floor),
        }
        for row in self.table:
            name = "-".join(str(s) for s in row["layer_sizes"])
            out[f"{METRIC_PREFIX}[{name}]"] = round(row["ceiling"], 4)
        return out


def layer_sizes_for(
    V: Any, *, ae_params: dict[str, Any] | None = None, seed: int = 0
) -> tuple[tuple[int, ...], dict[str, float]]:
    """What ``train_two_step`` uses without ``layer_sizes``: the choice and its metrics,
    or ``default_layer_sizes(p)`` when there is too little to choose on (fewer than 10
    labelled rows or 3 labels; ``code_size_chosen`` 0)."""
    try:
        choice = choose_layer_sizes(V, ae_params=ae_params, seed=seed)
    except ConfigError as exc:
        if exc.code not in ("autoencoder.too_few_rows", "autoencoder.too_few_labels"):
            raise
        return default_layer_sizes(int(V.shape[1])), {"code_size_chosen": 0.0}
    return choice.layer_sizes, choice.metrics()


def code_size_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The code-size figures among a model's ``metadata.metrics`` (for a job's result)."""
    return {k: v for k, v in metrics.items() if k.startswith(("code_size", METRIC_PREFIX))}


def candidate_sizes(n_labels: int) -> list[tuple[int, int]]:
    """``default_layer_sizes(p)`` scaled by ``SCALES``, valid for p, narrowest first."""
    if n_labels < 3:
        raise ConfigError(
            "autoencoder.too_few_labels", f"need at least 3 labels to compress, got {n_labels}"
        )
    first0, last0 = default_layer_sizes(n_labels)
    out = set()
    for scale in SCALES:
        first = min(n_labels - 1, max(2, round(first0 * scale)))
        out.add((first, min(first - 1, max(1, round(last0 * scale)))))
    return sorted(out, key=lambda s: (s[1], s[0]))


def code_floor(n_labels: int) -> int:
    """The narrowest code that can tell ``n_labels`` labels apart: ceil(log2 p) units."""
    return max(1, math.ceil(math.log2(max(n_labels, 2))))


def choose_layer_sizes(
    V: Any,
    *,
    k: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    candidates: list[tuple[int, ...]] | None = None,
    epochs: int = 60,
    max_rows: int = 4096,
    holdout_fraction: float = 0.2,
    ae_params: dict[str, Any] | None = None,
    seed: int = 0,
) -> CodeSizeChoice:
    """Pick the sizes for the label matrix ``V`` (n, p; dense or sparse, 0/1); see the
    module docstring. ``ae_params`` go to every candidate's autoencoder (e.g. ``loss``)."""
    if not 0 <= tolerance < 1 or not 0 < holdout_fraction < 1 or max_rows < 10:
        raise ConfigError("autoencoder.bad_param", "need 0 <= tolerance < 1, 0 < holdout < 1")
    rng = np.random.default_rng(seed)
    fit_rows, held_rows = _sample(V, max_rows, holdout_fraction, rng)
    p = fit_rows.shape[1]
    k = _default_k(fit_rows) if k is None else int(k)
    if not 1 <= k <= p:
        raise ConfigError("config.k", f"k must be in 1..{p}, got {k}")
    sizes = sorted(
        (tuple(int(s) for s in c) for c in (candidates or candidate_sizes(p))),
        key=lambda c: (c[-1], c[0]),  # narrowest code first
    )
    params = {"patience": 5, **(ae_params or {}), "epochs": epochs, "seed": seed}
    ceilings = [_ceiling(fit_rows, held_rows, c, k, params) for c in sizes]
    best, floor = max(ceilings), code_floor(p)
    ok = [c[-1] >= floor and v >= best - tolerance for c, v in zip(sizes, ceilings, strict=True)]
    table = [
        {"layer_sizes": c, "ceiling": v, "eligible": e}
        for c, v, e in zip(sizes, ceilings, ok, strict=True)
    ]
    chosen = sizes[ok.index(True)] if any(ok) else sizes[int(np.argmax(ceilings))]
    return CodeSizeChoice(chosen, k, tolerance, floor, best, len(fit_rows) + len(held_rows), table)


def _sample(
    V: Any, max_rows: int, holdout_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) as dense float32; rows without labels are left out
    (P@k is undefined for them). Sampling happens before densifying a sparse V."""
    matrix = V.tocsr() if sp.issparse(V) else np.asarray(V)
    if matrix.ndim != 2:
        raise ConfigError("autoencoder.bad_input", f"expected a 2-D matrix, got {matrix.ndim}-D")
    counts = np.asarray(matrix.sum(axis=1)).ravel()
    rows = rng.permutation(np.flatnonzero(counts > 0))[:max_rows]
    X = check_label_matrix(matrix[np.sort(rows)], min_rows=1)
    n_held = round(holdout_fraction * len(X))
    if n_held < 2 or len(X) - n_held < 4:
        raise ConfigError(
            "autoencoder.too_few_rows", f"need at least 10 labelled rows, got {len(X)}"
        )
    order = rng.permutation(len(X))
    return X[order[n_held:]], X[order[:n_held]]


def _default_k(X: np.ndarray) -> int:
    return int(min(5, max(1, math.floor(float(X.sum(axis=1).mean())))))


def _ceiling(
    fit: np.ndarray, held: np.ndarray, sizes: tuple[int, ...], k: int, params: dict[str, Any]
) -> float:
    ae = DeepNonNegativeAutoencoder(layer_sizes=sizes, **params).fit(fit)
    return float(precision_at_k(held, ae.inverse_transform(ae.transform(held)), k))
