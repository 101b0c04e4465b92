"""Mask samplers for LIME: which superpixels each perturbed sample hides.

Every sampler draws rows whose marginal distribution is ``lime``'s (each segment kept
with probability 0.5, independently), so the surrogate estimates the same thing; they
differ in how the rows of one draw depend on each other, which is where variance at an
equal number of forward passes can be taken out.

- ``lime``: independent Bernoulli(0.5) rows, ``lime``'s very draw for a seed (the
  reproducible reference and the default).
- ``antithetic``: rows in pairs, a mask and its complement. A set of pairs is a
  foldover design: every main effect (a superpixel's weight) is orthogonal to every
  two-segment interaction, so interactions of the model stop leaking into the weights
  as noise (the paired sampling of KernelSHAP, Covert & Lee 2021).
- ``stratified``: the number of kept segments follows Binomial(K, 0.5) as in ``lime``,
  but drawn by stratified inverse-CDF (one uniform per stratum ``[i/n, (i+1)/n)``), the
  kept segments then chosen uniformly: the counts, hence the kernel weights, cover
  their distribution evenly instead of clumping.
- ``antithetic_stratified``: stratified counts for the first row of each pair, its
  complement second (Binomial(K, 0.5) is symmetric, so complements keep the law).

Each returns uint8 ``(n, K)`` 0/1 rows (1 keeps a segment), row 0 all ones when
``first``: the form both the host and the device perturbation paths take.
``resampling_groups`` says which rows belong together (a pair), for the bootstrap of
``stability``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import binom

SamplerName = Literal["lime", "antithetic", "stratified", "antithetic_stratified"]
SAMPLERS: tuple[SamplerName, ...] = ("lime", "antithetic", "stratified", "antithetic_stratified")


def draw_sampler_masks(
    sampler: str, rng: np.random.RandomState, n: int, n_segments: int, *, first: bool
) -> np.ndarray:
    """``n`` mask rows over ``n_segments`` from ``sampler``, uint8 ``(n, K)``."""
    if sampler == "lime":
        rows = rng.randint(0, 2, n * n_segments).reshape(n, n_segments).astype(np.uint8)
    else:
        rows = np.empty((n, n_segments), np.uint8)
        start = 1 if first and n else 0
        rows[start:] = _structured(sampler, rng, n - start, n_segments)
    if first and n:
        rows[0] = 1
    return rows


def _structured(sampler: str, rng: np.random.RandomState, n: int, k: int) -> np.ndarray:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; one of {SAMPLERS}")
    paired = sampler.startswith("antithetic")
    stratified = sampler.endswith("stratified")
    # An odd count leaves one unpaired row at the end: the budget is exactly ``n``.
    firsts = (n + 1) // 2 if paired else n
    if stratified:
        heads = _rows_with_counts(rng, _stratified_counts(rng, firsts, k), k)
    else:
        heads = rng.randint(0, 2, firsts * k).reshape(firsts, k).astype(np.uint8)
    if not paired:
        return heads
    out = np.empty((n, k), np.uint8)
    out[0::2] = heads
    out[1::2] = 1 - heads[: n // 2]
    return out


def _stratified_counts(rng: np.random.RandomState, n: int, k: int) -> np.ndarray:
    """``n`` kept-segment counts, Binomial(k, 0.5) by stratified inverse CDF, shuffled."""
    uniforms = (np.arange(n) + rng.random_sample(n)) / max(n, 1)
    counts = binom.ppf(uniforms, k, 0.5).astype(np.int64)
    return rng.permutation(np.clip(counts, 0, k))


def _rows_with_counts(rng: np.random.RandomState, counts: np.ndarray, k: int) -> np.ndarray:
    """One row per count with that many ones at uniformly random positions."""
    ranks = np.argsort(rng.random_sample((len(counts), k)), axis=1)
    return (ranks < counts[:, None]).astype(np.uint8)


def resampling_groups(sampler: str, rounds: list[int]) -> np.ndarray:
    """Group id per row of the concatenated rounds (sizes ``rounds``, the first one
    starting with the original image): rows drawn as one antithetic pair share an id,
    every other row has its own; the original (row 0) gets ``-1``, as it is in every
    run once and is not resampled."""
    ids: list[np.ndarray] = []
    next_id = 0
    for index, size in enumerate(rounds):
        head = 1 if index == 0 and size else 0
        if head:
            ids.append(np.array([-1]))
        body = size - head
        if sampler.startswith("antithetic"):
            local = np.arange(body) // 2
            width = (body + 1) // 2
        else:
            local = np.arange(body)
            width = body
        ids.append(local + next_id)
        next_id += width
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)
