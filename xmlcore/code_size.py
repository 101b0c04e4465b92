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
3. a candidate is eligible when its code is at least ``ceil(log2 p)`` units wide (a
   code must be able to tell the p labels apart, and an index into p labels needs
   log2(p) bits: a unit that is on or off carries one) and at most ``n /
   rows_per_unit`` units wide, n the labelled rows (the CNN learns every code unit
   from the images: a code wider than that leaves it too few rows per unit, and the
   ceiling's gain never reaches the test set);
4. the choice is the narrowest eligible candidate whose ceiling is within
   ``tolerance`` of the best ELIGIBLE candidate's. If no candidate clears both bounds
   the row cap is dropped; if none clears the floor (tiny p), the best one is taken.

Why the row cap. The ceiling keeps rising with width up to a code as wide as the
vocabulary (an autoencoder that copies its input decodes perfectly), so "within
tolerance of the best" alone drifts to the widest candidate. On the 60-label ``small``
preset (480 training rows) it chose (59, 58) over (30, 15): test P@5 level over five
paired seeds (0.5815 against 0.5817; the from-scratch CNN, not the decoder, bounds it)
and the hierarchy lost (NMI 0.698 against 0.751: a second layer as wide as the first
groups nothing). The two cases where width paid, the 708-label ``paper`` preset (256-64
over 64-16: +0.033 P@5, 2,703 rows, 42 per unit) and the 14-label ``digits`` preset
(13-12 over 7-3: +0.108 P@3, 1,200 rows, 100 per unit), have many rows per code unit;
``small`` at 59-58 has 8, at 30-15 has 32. Any cap between 16 and 42 rows per unit
separates them; 25 sits in the middle (docs/BENCHMARKS.md).

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
from xmlcore.autoencoder_training import dense_blocks
from xmlcore.errors import ConfigError
from xmlcore.metrics import precision_at_k

SCALES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_TOLERANCE = 0.01
ROWS_PER_UNIT = 25.0
METRIC_PREFIX = "decoder_ceiling"


@dataclass(frozen=True)
class CodeSizeChoice:
    """The chosen ``layer_sizes`` and the table it was chosen from.

    ``table``: per candidate ``{"layer_sizes", "ceiling", "eligible"}``, narrowest
    first; ``ceiling`` is held-out P@``k`` of the decoded true labels. ``best`` is the
    best eligible ceiling, ``cap`` the widest code the labelled rows allow.
    """

    layer_sizes: tuple[int, ...]
    k: int
    tolerance: float
    floor: int
    best: float
    n_rows: int
    cap: int = 0
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
            "code_size_cap": float(self.cap),
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
    rows_per_unit: float = ROWS_PER_UNIT,
    ae_params: dict[str, Any] | None = None,
    seed: int = 0,
) -> CodeSizeChoice:
    """Pick the sizes for the label matrix ``V`` (n, p; dense or sparse, 0/1); see the
    module docstring. ``ae_params`` go to every candidate's autoencoder (e.g. ``loss``);
    ``rows_per_unit`` 0 lifts the row cap."""
    if not 0 <= tolerance < 1 or not 0 < holdout_fraction < 1 or max_rows < 10:
        raise ConfigError("autoencoder.bad_param", "need 0 <= tolerance < 1, 0 < holdout < 1")
    if not 0 <= rows_per_unit < float("inf"):
        raise ConfigError("autoencoder.bad_param", "need 0 <= rows_per_unit < inf")
    rng = np.random.default_rng(seed)
    fit_rows, held_rows, n_labelled = _sample(V, max_rows, holdout_fraction, rng)
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
    floor = code_floor(p)
    cap = int(n_labelled / rows_per_unit) if rows_per_unit > 0 else max(c[-1] for c in sizes)
    chosen, best, ok = pick_sizes(sizes, ceilings, floor=floor, cap=cap, tolerance=tolerance)
    table = [
        {"layer_sizes": c, "ceiling": v, "eligible": e}
        for c, v, e in zip(sizes, ceilings, ok, strict=True)
    ]
    n_rows = fit_rows.shape[0] + held_rows.shape[0]
    return CodeSizeChoice(chosen, k, tolerance, floor, best, n_rows, cap=cap, table=table)


def pick_sizes(
    sizes: list[tuple[int, ...]],
    ceilings: list[float],
    *,
    floor: int,
    cap: int,
    tolerance: float,
) -> tuple[tuple[int, ...], float, list[bool]]:
    """(chosen sizes, best eligible ceiling, eligible per candidate) for candidates
    ordered narrowest code first: steps 3-4 of the module docstring."""
    allowed = [floor <= c[-1] <= cap for c in sizes]
    if not any(allowed):  # few rows, many labels: telling the labels apart comes first
        allowed = [c[-1] >= floor for c in sizes]
    if not any(allowed):  # tiny p: no candidate reaches the floor
        return sizes[int(np.argmax(ceilings))], max(ceilings), [False] * len(sizes)
    best = max(v for v, a in zip(ceilings, allowed, strict=True) if a)
    ok = [a and v >= best - tolerance for v, a in zip(ceilings, allowed, strict=True)]
    return sizes[ok.index(True)], best, ok


def _sample(
    V: Any, max_rows: int, holdout_fraction: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix, int]:
    """(fit rows, held-out rows, labelled rows of ``V``), the rows as float32 CSR (never
    densified); rows without labels are left out (P@k is undefined for them)."""
    matrix = V.tocsr() if sp.issparse(V) else np.asarray(V)
    if matrix.ndim != 2:
        raise ConfigError("autoencoder.bad_input", f"expected a 2-D matrix, got {matrix.ndim}-D")
    counts = np.asarray(matrix.sum(axis=1)).ravel()
    labelled = np.flatnonzero(counts > 0)
    rows = rng.permutation(labelled)[:max_rows]
    X = check_label_matrix(matrix[np.sort(rows)], min_rows=1)
    n_held = round(holdout_fraction * X.shape[0])
    if n_held < 2 or X.shape[0] - n_held < 4:
        raise ConfigError(
            "autoencoder.too_few_rows", f"need at least 10 labelled rows, got {X.shape[0]}"
        )
    order = rng.permutation(X.shape[0])
    return X[order[n_held:]], X[order[:n_held]], len(labelled)


def _default_k(X: sp.csr_matrix) -> int:
    return int(min(5, max(1, math.floor(float(X.sum()) / max(X.shape[0], 1)))))


def _ceiling(
    fit: sp.csr_matrix,
    held: sp.csr_matrix,
    sizes: tuple[int, ...],
    k: int,
    params: dict[str, Any],
) -> float:
    ae = DeepNonNegativeAutoencoder(layer_sizes=sizes, **params).fit(fit)
    return decoder_ceiling(ae, held, k)


def decoder_ceiling(ae: DeepNonNegativeAutoencoder, V: Any, k: int) -> float:
    """P@k of ``inverse_transform(transform(V))`` against ``V``, in row blocks (the
    scores of a block are dense, never those of all of ``V``)."""
    X = check_label_matrix(V)
    total = 0.0
    for start, block in dense_blocks(X):
        rows = X[start : start + len(block)]
        scores = ae.inverse_transform(ae.transform(rows))
        total += precision_at_k(rows, scores, k) * rows.shape[0]
    return total / max(X.shape[0], 1)
