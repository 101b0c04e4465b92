"""``stability@k``: how much a LIME answer's top-k superpixels would move on a rerun.

Estimated from the samples the explanation already has, at no extra forward pass: the
weighted ridge is refitted on ``replicates`` bootstrap resamples of its own rows (the
resampling shows up only as integer multipliers of the kernel weights, so nothing is
copied), and ``stability@k`` is the mean, over all pairs of replicates, of the share of
top-``k`` segments two replicates have in common (1: always the same set).

Why a bootstrap and not two halves: two bootstrap replicates each have the full number
of samples, so they differ about as much as two runs with different seeds at the same
``num_samples``, which is what a user rerunning an explanation sees; two halves would
measure runs of half the size and read too pessimistic. Rows drawn together (an
antithetic pair) are resampled together, so the estimate keeps the sampler's
structure; the unperturbed row 0 is in every replicate once, as in every run.
The replicates draw from their own generator, seeded from the image seed: masks, and
so ``lime``-identical results, are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xmlcore.explain.surrogate import fit_weighted_ridge

DEFAULT_REPLICATES = 8
STABILITY_K = 5


def stability_ks(top_k: int) -> tuple[int, ...]:
    """The ``k`` values a result reports: 5, and the result's own ``top_k`` too."""
    return tuple(sorted({STABILITY_K, top_k}))


def bootstrap_stability(
    X: np.ndarray,
    Y: np.ndarray,
    weights: np.ndarray,
    groups: np.ndarray,
    *,
    alpha: float,
    ks: Sequence[int],
    seed: int,
    replicates: int = DEFAULT_REPLICATES,
) -> dict[int, np.ndarray]:
    """Per ``k``, per output column of ``Y`` ``(S, m)``: ``stability@k`` in [0, 1].

    ``groups`` ``(S,)`` gives each row's resampling unit (``-1``: always kept once).
    A ``k`` at or over the number of segments is trivially stable (1.0).
    """
    n_segments = X.shape[1]
    units, inverse = np.unique(groups[groups >= 0], return_inverse=True)
    rng = np.random.default_rng(seed)
    tops: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for _ in range(replicates):
        multiplier = np.ones(len(groups))
        counts = rng.multinomial(len(units), np.full(len(units), 1.0 / max(len(units), 1)))
        multiplier[groups >= 0] = counts[inverse]
        fit = fit_weighted_ridge(X, Y, weights * multiplier, alpha, with_errors=False)
        for k in ks:
            tops[k].append(fit.top_segments(min(k, n_segments)))
    return {k: _mean_pairwise_overlap(tops[k], k, n_segments) for k in ks}


def _mean_pairwise_overlap(tops: list[np.ndarray], k: int, n_segments: int) -> np.ndarray:
    """``tops``: per replicate ``(m, k)`` segment ids; mean share in common per output."""
    m = tops[0].shape[0]
    if k >= n_segments:
        return np.ones(m)
    member = np.zeros((len(tops), m, n_segments), bool)
    for r, top in enumerate(tops):
        np.put_along_axis(member[r], top, True, axis=1)
    total = np.zeros(m)
    pairs = 0
    for a in range(len(tops)):
        for b in range(a + 1, len(tops)):
            total += (member[a] & member[b]).sum(axis=1) / k
            pairs += 1
    return total / max(pairs, 1)
