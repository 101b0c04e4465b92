"""The weighted ridge surrogate of LIME, solved for many outputs at once.

Every column of the model's output is regressed on the same mask matrix with the same
sample weights, so one ``K x K`` system with ``m`` right-hand sides answers every target
(latent units and labels alike) instead of one ``sklearn.linear_model.Ridge`` per target.
The maths is sklearn's ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)``:
centre ``X`` and ``y`` on their weighted means, solve
``(Xc^T W Xc + alpha I) B = Xc^T W Yc``, then ``intercept = y_mean - x_mean @ B``. The
score is sklearn's weighted R^2 (``Ridge.score`` with the same weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import scipy.linalg
from threadpoolctl import ThreadpoolController

from xmlcore.errors import ExplainError


@dataclass(frozen=True)
class RidgeFit:
    """Coefficients ``(K, m)``, intercepts, R^2 scores and predictions at all-ones ``(m,)``;
    ``coef_se`` ``(K, m)`` are approximate standard errors (weighted least squares with
    the kernel weights as precisions, ridge term ignored in the residual degrees)."""

    coef: np.ndarray
    intercept: np.ndarray
    score: np.ndarray
    local_prediction: np.ndarray
    coef_se: np.ndarray

    def separation(self, k: int) -> np.ndarray:
        """Per output, how clearly the top-``k`` set stands apart: the smallest
        ``(c_i - c_j) / sqrt(se_i^2 + se_j^2)`` over ``i`` in the set and ``j`` outside
        (``inf`` when every segment is in the set)."""
        n_segments, m = self.coef.shape
        if k >= n_segments:
            return np.full(m, np.inf)
        top = self.top_segments(k)
        result = np.empty(m)
        for j in range(m):
            inside = np.zeros(n_segments, bool)
            inside[top[j]] = True
            c, se = self.coef[:, j], self.coef_se[:, j]
            diff = c[inside][:, None] - c[~inside][None, :]
            spread = np.sqrt(se[inside][:, None] ** 2 + se[~inside][None, :] ** 2)
            result[j] = np.min(diff / np.maximum(spread, 1e-300))
        return result

    def top_segments(self, k: int) -> np.ndarray:
        """Per output, the ``k`` segments of largest weight, descending: ``(m, k)``.

        A stable sort on ``-coef`` breaks ties by the lower segment id, so rankings
        compare reproducibly between rounds.
        """
        order = np.argsort(-self.coef, axis=0, kind="stable")
        return order[: min(k, self.coef.shape[0])].T


def fit_weighted_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    weights: np.ndarray,
    alpha: float = 1.0,
    *,
    with_errors: bool = True,
) -> RidgeFit:
    """Weighted ridge with intercept for every column of ``Y`` (``(S, m)``) on ``X`` (``(S, K)``).

    Float64 throughout; ``alpha > 0`` keeps the system positive definite even when a
    segment was never hidden (a constant column). BLAS runs single-threaded here: the
    products are small, and right after a model call its threads compete with the
    framework's still-spinning ones (measured: 1 ms alone, 30-120 ms after a forward pass).
    ``with_errors=False`` skips the standard errors (``coef_se`` is then all zeros): the
    bootstrap of ``stability`` needs only coefficients.
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        return _fit(X, Y, weights, alpha, with_errors)


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _fit(
    X: np.ndarray, Y: np.ndarray, weights: np.ndarray, alpha: float, with_errors: bool
) -> RidgeFit:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if len(X) != len(Y) or len(X) != len(w) or w.sum() <= 0:
        raise ExplainError(
            "explain.surrogate", f"bad surrogate data: X {X.shape}, Y {Y.shape}, w {w.shape}"
        )
    x_mean = w @ X / w.sum()
    y_mean = w @ Y / w.sum()
    Xc = X - x_mean
    Yc = Y - y_mean
    XtW = Xc.T * w
    gram = XtW @ Xc
    gram[np.diag_indices_from(gram)] += alpha
    factor = scipy.linalg.cho_factor(gram)
    coef = scipy.linalg.cho_solve(factor, XtW @ Yc)
    intercept = y_mean - x_mean @ coef
    fitted = Xc @ coef
    score = _weighted_r2(Yc, fitted, w)
    local = intercept + coef.sum(axis=0)
    if not with_errors:
        return RidgeFit(coef, intercept, score, local, np.zeros_like(coef))
    residual_var = w @ (Yc - fitted) ** 2 / max(w.sum() - X.shape[1] - 1, 1.0)
    inv_diag = np.diag(scipy.linalg.cho_solve(factor, np.eye(len(gram))))
    se = np.sqrt(np.outer(inv_diag, residual_var))
    return RidgeFit(coef=coef, intercept=intercept, score=score, local_prediction=local, coef_se=se)


def _weighted_r2(Yc: np.ndarray, Yc_hat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sklearn's ``r2_score(y, y_hat, sample_weight=w)`` per column, on centred data.

    Centring both on the same weighted mean leaves residuals and total variance
    unchanged. A constant target scores 1 if fitted exactly, else 0 (sklearn's rule).
    """
    resid = w @ (Yc - Yc_hat) ** 2
    total = w @ Yc**2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - resid / total
    constant = total <= 0
    r2[constant] = np.where(resid[constant] <= 0, 1.0, 0.0)
    return r2
