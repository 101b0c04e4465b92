"""Extreme multi-label ranking metrics (as in the Extreme Classification Repository).

``Y`` is the true ``(n, p)`` 0/1 label matrix, dense or ``scipy.sparse``; ``scores`` is a
dense ``(n, p)`` float matrix, higher meaning more likely. Each row's ranking is a stable
argsort of ``-scores``: equal scores keep column order, so results never depend on luck.
Every ``@k`` metric is a mean over all ``n`` rows; a row without any true label counts as
0 for precision and nDCG (it is not dropped, so a model is not rewarded for empty rows).

Hierarchy metrics compare label groupings (``pred_groups[j]``: the group of label ``j``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from xmlcore.errors import ConfigError

# Rows are ranked in chunks of about this many scores, so memory stays bounded for
# large n * p (argsort needs an int64 per score).
_CHUNK_ELEMENTS = 2**22


def precision_at_k(Y: Any, scores: Any, k: int) -> float:
    """P@k: mean over rows of (true labels among the top ``k``) / ``k``."""
    _, _, gains = _ranked(Y, scores, k)
    return _precision(gains, k)


def ndcg_at_k(Y: Any, scores: Any, k: int) -> float:
    """nDCG@k = DCG@k / IDCG@min(k, |y|), averaged over rows.

    DCG@k = sum over ranks r = 1..k of y_r / log2(r + 1); IDCG is the DCG of a perfect
    ranking, which puts all ``|y|`` true labels first. Rows with no label count 0.
    """
    labels, _, gains = _ranked(Y, scores, k)
    return _ndcg(gains, np.diff(labels.indptr), k)


def propensities(Y: Any, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Label propensities of Jain, Prabhu and Varma (KDD 2016), ``(p,)`` in (0, 1].

    p_l = 1 / (1 + C exp(-A log(N_l + B))), C = (log N - 1) (B + 1)^A, with N the number
    of rows and N_l the rows carrying label l (natural logs). Rare labels get small
    propensities. Needs N >= 3: below that C is negative and the model has no meaning.
    """
    labels = _labels(Y)
    n = labels.shape[0]
    if n < 3:
        raise ConfigError("metrics.too_few_rows", f"propensities need >= 3 rows, got {n}")
    if not (A > 0 and B > 0):
        raise ConfigError("metrics.bad_propensity", f"A and B must be positive: A={A}, B={B}")
    counts = np.bincount(labels.indices, minlength=labels.shape[1]).astype(np.float64)
    c = (np.log(n) - 1.0) * (B + 1.0) ** A
    return 1.0 / (1.0 + c * np.exp(-A * np.log(counts + B)))


def psp_at_k(Y: Any, scores: Any, k: int, propensity: Any = None) -> float:
    """Normalised propensity-scored precision PSP@k (Extreme Classification Repository).

    PSP@k = sum over rows of sum over the top ``k`` of y_l / p_l, divided by the best
    value any ranking could reach: sum over rows of the ``k`` largest y_l / p_l. So it lies
    in [0, 1] and rewards getting rare (low-propensity) labels right. ``propensity``
    defaults to ``propensities(Y)``; pass the training set's to follow the usual
    protocol. Returns 0 when ``Y`` has no label at all.
    """
    labels, top, gains = _ranked(Y, scores, k)
    inverse = _inverse_propensity(labels, propensity)
    return _psp(labels, top, gains, inverse, k)


def coverage_at_k(scores: Any, k: int, n_labels: int | None = None) -> float:
    """Share of the ``n_labels`` labels (default: every column) that appear in at least
    one row's top ``k``. Low coverage means the model only ever predicts the head."""
    ranking = _scores(scores)
    n_labels = ranking.shape[1] if n_labels is None else n_labels
    if n_labels < ranking.shape[1]:
        raise ConfigError(
            "metrics.shape_mismatch", f"n_labels={n_labels} < {ranking.shape[1]} score columns"
        )
    return _coverage(_top_k(ranking, _check_k(k)), k, n_labels)


def evaluate_ranking(
    Y: Any, scores: Any, ks: Sequence[int] = (1, 3, 5), propensity: Any = None
) -> dict[str, float]:
    """All ranking metrics for every ``k`` in ``ks``, ranking each row once.

    Keys: ``"p@k"``, ``"ndcg@k"``, ``"psp@k"``, ``"coverage@k"``. ``propensity`` as in
    ``psp_at_k`` (the default needs at least 3 rows).
    """
    checked = [_check_k(k) for k in ks]
    if not checked:
        raise ConfigError("metrics.bad_k", "ks must name at least one k")
    labels, top, gains = _ranked(Y, scores, max(checked))
    inverse = _inverse_propensity(labels, propensity)
    n_true = np.diff(labels.indptr)
    result: dict[str, float] = {}
    for k in checked:
        result[f"p@{k}"] = _precision(gains, k)
        result[f"ndcg@{k}"] = _ndcg(gains, n_true, k)
        result[f"psp@{k}"] = _psp(labels, top, gains, inverse, k)
        result[f"coverage@{k}"] = _coverage(top, k, labels.shape[1])
    return result


# --------------------------------------------------------------------- hierarchy


def assign_groups_from_weights(H1: Any) -> np.ndarray:
    """Group of each label: the unit with its largest weight, ``(p,)`` int64.

    ``H1`` is ``(p, k)`` (labels x units, e.g. the autoencoder's first layer). Ties go to
    the lowest unit; a label with no positive weight belongs to no unit and gets -1.
    """
    weights = np.asarray(H1, dtype=np.float64)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ConfigError("metrics.shape_mismatch", f"H1 must be (p, k), got {weights.shape}")
    if not np.isfinite(weights).all():
        raise ConfigError("metrics.bad_scores", "H1 holds NaN or infinite weights")
    groups = np.argmax(weights, axis=1).astype(np.int64)
    groups[weights.max(axis=1) <= 0] = -1
    return groups


def hierarchy_nmi(pred_groups: Sequence[Any], true_groups: Sequence[Any]) -> float:
    """Normalised mutual information (arithmetic mean normalisation) of two groupings."""
    pred, true = _groupings(pred_groups, true_groups)
    return float(normalized_mutual_info_score(true, pred))


def best_match_purity(pred_groups: Sequence[Any], true_groups: Sequence[Any]) -> float:
    """Purity: each predicted group is matched to the true group it overlaps most; the
    share of labels inside their group's match. 1 means no predicted group mixes groups."""
    pred, true = _groupings(pred_groups, true_groups)
    table = contingency_matrix(true, pred)
    return float(np.asarray(table.max(axis=0)).sum() / len(pred))


def _groupings(pred_groups: Sequence[Any], true_groups: Sequence[Any]) -> tuple[Any, Any]:
    pred, true = np.asarray(pred_groups), np.asarray(true_groups)
    if pred.ndim != 1 or pred.shape != true.shape:
        raise ConfigError(
            "metrics.shape_mismatch", f"groupings of shapes {pred.shape} and {true.shape}"
        )
    if pred.size == 0:
        raise ConfigError("metrics.empty", "groupings are empty")
    return pred, true


# --------------------------------------------------------------------- internals


def _labels(Y: Any) -> sp.csr_matrix:
    """Canonical CSR float64 copy of ``Y``; refuses anything but 2-D 0/1."""
    if sp.issparse(Y):
        labels = sp.csr_matrix(Y, dtype=np.float64, copy=True)
        labels.sum_duplicates()
        labels.eliminate_zeros()
        binary = bool(np.all(labels.data == 1))
    else:
        dense = np.asarray(Y)
        if dense.ndim != 2:
            raise ConfigError("metrics.shape_mismatch", f"Y must be 2-D, got {dense.shape}")
        binary = bool(np.all((dense == 0) | (dense == 1)))
        labels = sp.csr_matrix(dense.astype(np.float64))
    if not binary:
        raise ConfigError("metrics.not_binary", "Y must hold only 0 and 1")
    if 0 in labels.shape:
        raise ConfigError("metrics.empty", f"Y has shape {labels.shape}")
    return labels


class BlockScores:
    """Scores ``(n, p)`` made a block of rows at a time by ``rows(start, stop)``.

    Ranking reads scores in row chunks anyway (``_top_k``), so a model's decoded scores
    for a big test set (n x p floats: 16 GB at 200k x 20k) need never exist at once
    (issue 12: evaluation memory grows with n x k, not n x p). Any metric taking
    ``scores`` takes one.
    """

    ndim = 2

    def __init__(self, shape: tuple[int, int], rows: Callable[[int, int], Any]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self._rows = rows

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.shape[0])
        block = np.asarray(self._rows(start, stop))
        if block.shape != (stop - start, self.shape[1]):
            raise ConfigError(
                "metrics.shape_mismatch", f"a score block is {block.shape}, not {stop - start} rows"
            )
        if not np.issubdtype(block.dtype, np.number) or np.isnan(block).any():
            raise ConfigError("metrics.bad_scores", "scores must be numbers without NaN")
        return block


def _scores(scores: Any) -> Any:
    if isinstance(scores, BlockScores):
        if 0 in scores.shape:
            raise ConfigError("metrics.empty", f"scores have shape {scores.shape}")
        return scores
    ranking = scores.toarray() if sp.issparse(scores) else np.asarray(scores)
    if ranking.ndim != 2:
        raise ConfigError("metrics.shape_mismatch", f"scores must be 2-D, got {ranking.shape}")
    if 0 in ranking.shape:
        raise ConfigError("metrics.empty", f"scores have shape {ranking.shape}")
    if not np.issubdtype(ranking.dtype, np.number) or np.isnan(ranking).any():
        raise ConfigError("metrics.bad_scores", "scores must be numbers without NaN")
    return ranking


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError("metrics.bad_k", f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _ranked(Y: Any, scores: Any, k: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(labels, top (n, min(k, p)) column indices, gains (n, min(k, p)) 0/1)``."""
    k = _check_k(k)
    labels, ranking = _labels(Y), _scores(scores)
    if labels.shape != ranking.shape:
        raise ConfigError(
            "metrics.shape_mismatch", f"Y is {labels.shape} but scores are {ranking.shape}"
        )
    top = _top_k(ranking, k)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    gains = np.asarray(labels[rows, top.ravel()]).reshape(top.shape)
    return labels, top, gains


def _top_k(ranking: Any, k: int) -> np.ndarray:
    n, p = ranking.shape
    width = min(k, p)
    top = np.empty((n, width), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // p)
    for start in range(0, n, step):
        block = ranking[start : start + step].astype(np.float64)
        top[start : start + step] = _top_k_block(block, width)
    return top


def _top_k_block(block: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns of ``argsort(-block, kind="stable")``, in linear time.

    A full sort costs p log p per row; here a partition finds each row's ``width``-th
    largest score, ties at that threshold are taken in column order (as a stable sort
    would), and only the ``width`` chosen columns are sorted.
    """
    p = block.shape[1]
    if 4 * width >= p:
        return np.argsort(-block, axis=1, kind="stable")[:, :width]
    threshold = np.partition(block, p - width, axis=1)[:, p - width, None]
    above = block > threshold
    tied = block == threshold
    room = width - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    columns = np.nonzero(chosen)[1].reshape(-1, width)
    chosen_scores = np.take_along_axis(block, columns, axis=1)
    order = np.argsort(-chosen_scores, axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def _precision(gains: np.ndarray, k: int) -> float:
    return float(gains[:, :k].sum(axis=1).mean() / k)


def _ndcg(gains: np.ndarray, n_true: np.ndarray, k: int) -> float:
    width = min(k, gains.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = gains[:, :width] @ discounts
    ideal_at = np.minimum(n_true, width)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_at]
    per_row = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
    return float(per_row.mean())


def _inverse_propensity(labels: sp.csr_matrix, propensity: Any) -> np.ndarray:
    if propensity is None:
        return 1.0 / propensities(labels)
    values = np.asarray(propensity, dtype=np.float64)
    if values.shape != (labels.shape[1],):
        raise ConfigError(
            "metrics.shape_mismatch", f"propensity is {values.shape}, expected ({labels.shape[1]},)"
        )
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ConfigError("metrics.bad_propensity", "propensities must be finite and > 0")
    return 1.0 / values


def _psp(
    labels: sp.csr_matrix, top: np.ndarray, gains: np.ndarray, inverse: np.ndarray, k: int
) -> float:
    width = min(k, top.shape[1])
    achieved = float((gains[:, :width] * inverse[top[:, :width]]).sum())
    best = _best_top_k_sum(labels, inverse, width)
    return achieved / best if best > 0 else 0.0


def _best_top_k_sum(labels: sp.csr_matrix, weights: np.ndarray, k: int) -> float:
    """Sum over rows of the ``k`` largest weights among each row's true labels."""
    values = weights[labels.indices]
    rows = np.repeat(np.arange(labels.shape[0]), np.diff(labels.indptr))
    order = np.lexsort((-values, rows))
    rank = np.arange(values.size) - labels.indptr[rows]
    return float(values[order][rank < k].sum())


def _coverage(top: np.ndarray, k: int, n_labels: int) -> float:
    return float(np.unique(top[:, :k]).size / n_labels)
