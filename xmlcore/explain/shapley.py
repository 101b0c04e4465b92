"""KernelSHAP's coalitions and its constrained weighted least squares (Lundberg & Lee 2017).

This is the maths of the ``shap`` package's ``KernelExplainer`` (``shap/explainers/
_kernel.py``, 0.51), written for many outputs at once and for any feature set (here:
superpixels). Given ``M`` features:

- ``shapley_coalitions`` draws ``n_samples`` binary coalitions exactly as ``shap``
  does: the subset sizes ``s`` and ``M - s`` share the Shapley kernel weight
  ``(M - 1) / (s (M - s))``; every size whose whole share fits in the budget is
  enumerated (with its complements), smallest first; the rest of the budget is drawn at
  random, a size by the remaining weights, then a random subset of that size and its
  complement; a coalition drawn twice adds weight to the first copy instead of a row.
  With ``RandomState(seed)`` the draws are those ``shap`` makes after
  ``np.random.seed(seed)`` (it uses numpy's global ``RandomState``: ``choice``, then
  ``permutation`` per sample), so the same seed gives ``shap``'s very coalitions.
- ``solve_shapley`` fits ``f(z) - f(background) = sum_j phi_j z_j`` by weighted least
  squares under the efficiency constraint ``sum_j phi_j = f(x) - f(background)``,
  eliminating the last feature as ``shap`` does, for every output column in one solve.

``shap`` by default first selects at most 10 features with LARS (``l1_reg=
"num_features(10)"``) when ``M > 10``; we never do (the equivalent of ``l1_reg=0``):
every superpixel gets its Shapley estimate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.special import binom

from xmlcore.errors import ExplainError

MAX_ENUMERABLE = 30  # shap caps the budget at 2**M - 2 (every proper coalition) up to here


@dataclass(frozen=True)
class Coalitions:
    """Rows of ``masks`` (uint8 ``(S, M)``, 1 = the feature is present) with their
    kernel ``weights`` (float64 ``(S,)``)."""

    masks: np.ndarray
    weights: np.ndarray


def sample_budget(n_features: int, n_samples: int) -> int:
    """Coalitions ``shap`` evaluates for ``n_samples``: at most the ``2**M - 2`` proper
    non-empty ones."""
    if n_features <= MAX_ENUMERABLE:
        return min(n_samples, 2**n_features - 2)
    return n_samples


def shapley_coalitions(n_features: int, n_samples: int, rng: np.random.RandomState) -> Coalitions:
    """``shap.KernelExplainer``'s coalitions and weights for ``n_features >= 2``."""
    if n_features < 2 or n_samples < 1:
        raise ExplainError(
            "explain.bad_parameter",
            f"need >= 2 features and >= 1 sample: {n_features}, {n_samples}",
        )
    m = n_features
    budget = sample_budget(m, n_samples)
    n_sizes = m // 2  # ceil((M - 1) / 2)
    n_paired = (m - 1) // 2  # floor((M - 1) / 2)
    weight_vector = np.array([(m - 1.0) / (i * (m - i)) for i in range(1, n_sizes + 1)])
    weight_vector[:n_paired] *= 2
    weight_vector /= np.sum(weight_vector)
    rows: list[np.ndarray] = []
    weights: list[float] = []
    n_full = _enumerate_full_sizes(m, budget, weight_vector, n_paired, rows, weights)
    if n_full != n_sizes:
        _draw_random(m, budget, weight_vector, n_full, n_paired, rng, rows, weights)
    return Coalitions(np.array(rows, dtype=np.uint8).reshape(-1, m), np.array(weights))


def _enumerate_full_sizes(
    m: int,
    budget: int,
    weight_vector: np.ndarray,
    n_paired: int,
    rows: list[np.ndarray],
    weights: list[float],
) -> int:
    """Every coalition (and complement) of each size whose share of the budget covers
    them all, smallest size first; returns how many sizes were enumerated."""
    left = float(budget)
    remaining = weight_vector.copy()
    n_full = 0
    for size in range(1, len(weight_vector) + 1):
        n_subsets = binom(m, size) * (2 if size <= n_paired else 1)
        if left * remaining[size - 1] / n_subsets < 1.0 - 1e-8:
            break
        n_full += 1
        left -= n_subsets
        if remaining[size - 1] < 1.0:
            remaining /= 1 - remaining[size - 1]
        w = weight_vector[size - 1] / binom(m, size) / (2.0 if size <= n_paired else 1.0)
        for chosen in itertools.combinations(range(m), size):
            mask = np.zeros(m, np.uint8)
            mask[list(chosen)] = 1
            rows.append(mask)
            weights.append(w)
            if size <= n_paired:
                rows.append(1 - mask)
                weights.append(w)
    return n_full


def _draw_random(
    m: int,
    budget: int,
    weight_vector: np.ndarray,
    n_full: int,
    n_paired: int,
    rng: np.random.RandomState,
    rows: list[np.ndarray],
    weights: list[float],
) -> None:
    """The rest of the budget at random (shap's loop, draw for draw), then the random
    rows' weights scaled to the kernel weight the enumerated sizes left."""
    fixed = len(rows)
    left = budget - fixed
    remaining = weight_vector.copy()
    remaining[:n_paired] /= 2  # two rows per paired draw
    remaining = remaining[n_full:]
    remaining /= np.sum(remaining)
    sizes = rng.choice(len(remaining), 4 * left, p=remaining)
    seen: dict[bytes, int] = {}
    position = 0
    while left > 0 and position < len(sizes):
        size = int(sizes[position]) + n_full + 1
        position += 1
        mask = np.zeros(m, np.uint8)
        mask[rng.permutation(m)[:size]] = 1
        key = mask.tobytes()
        first = seen.get(key)
        if first is None:
            seen[key] = len(rows)
            rows.append(mask)
            weights.append(1.0)
            left -= 1
        else:
            weights[first] += 1.0
        if left > 0 and size <= n_paired:
            if first is None:
                rows.append(1 - mask)
                weights.append(1.0)
                left -= 1
            else:
                weights[first + 1] += 1.0
    random_part = np.array(weights[fixed:])
    weights[fixed:] = list(random_part * (weight_vector[n_full:].sum() / random_part.sum()))


def solve_shapley(
    masks: np.ndarray,
    weights: np.ndarray,
    outputs: np.ndarray,
    f_x: np.ndarray,
    f_background: np.ndarray,
) -> np.ndarray:
    """Shapley values ``(M, m)`` of ``m`` outputs from coalition ``outputs`` ``(S, m)``.

    Each column sums exactly to ``f_x - f_background`` (the efficiency constraint): the
    last feature is eliminated as ``phi_M = (f_x - f_bg) - sum_{j<M} phi_j``, and the
    others solve ``(X^T W X) phi = X^T W y`` with ``X = z_{<M} - z_M`` and
    ``y = f(z) - f_bg - z_M (f_x - f_bg)``, one factorisation for every output.
    """
    z = np.asarray(masks, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    y_all = np.asarray(outputs, dtype=np.float64)
    if y_all.ndim == 1:
        y_all = y_all[:, None]
    total = np.asarray(f_x, np.float64) - np.asarray(f_background, np.float64)
    if z.shape[1] == 1:
        return total[None, :].copy()
    adjusted = y_all - np.asarray(f_background, np.float64)
    y = adjusted - z[:, -1:] * total[None, :]
    X = z[:, :-1] - z[:, -1:]
    WX = w[:, None] * X
    try:
        phi_rest = np.linalg.solve(X.T @ WX, WX.T @ y)
    except np.linalg.LinAlgError:  # too few coalitions: the least-squares solution, as shap
        root = np.sqrt(w)[:, None]
        phi_rest = np.linalg.lstsq(root * X, root * y, rcond=None)[0]
    return np.vstack([phi_rest, total - phi_rest.sum(axis=0)])
