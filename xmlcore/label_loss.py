"""Decoder-aware training of the latent regressor: a label-space loss through the decoder.

The paper fits the CNN to W_L with a plain MSE in latent space, but P@k is measured on
the decoded label scores ``max(z, 0) @ D`` (``D = H_L^T ... H_1^T``, fixed). Errors in
latent units with heavy decoder rows cost many labels, errors in light ones almost
none, and plain latent MSE treats them alike. ``label_loss`` adds, during training only,
a second term on the decoded scores of the training labels ``V``:

    loss = MSE(standardised latent) + label_weight * sum_j w_j (s_j - v_j)^2 / baseline

``baseline`` is the same sum for an all-zero prediction, so ``label_weight=1`` puts both
terms on one footing. The latent term stays: it anchors every latent unit to the
autoencoder's meaning (the label hierarchy and ``LatentUnit`` explanations keep
reading the same units), and it keeps a gradient on units the clip at 0 has switched
off. The decoder is frozen, and the saved network is the plain latent regressor, so
prediction, artifacts and explanations are unchanged.

``label_loss``: ``"none"`` (the paper's pure latent regression), ``"mse"`` (w_j = 1),
``"propensity_mse"`` (tail-aware: w_j = (1 / propensity_j) ** tail_power, mean 1, Jain
et al. 2016 propensities of the training labels, so a miss on a rare label costs more).

A logistic decoder (the autoencoder's ``"bce"`` loss: ``sigmoid(max(z, 0) @ D + b)``)
is trained the way it was fitted: the label term is then the binary cross-entropy of
the logits ``max(z, 0) @ D + b``, weighted the same way, and ``baseline`` is its value
at the bias alone (every label at its training rate).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import scipy.sparse as sp
from keras import layers, ops

from xmlcore.errors import ConfigError
from xmlcore.metrics import propensities

LABEL_LOSSES = ("none", "mse", "propensity_mse")

__all__ = ["LABEL_LOSSES", "check_decoder_inputs", "label_space_loss", "label_weights"]


def label_weights(labels: Any, kind: str, tail_power: float) -> np.ndarray:
    """Per-label weights ``(p,)`` float32 with mean 1 (all ones for ``"mse"``)."""
    if kind != "propensity_mse" or labels.shape[0] < 3:
        return np.ones(labels.shape[1], dtype=np.float32)
    weights = (1.0 / propensities(labels)) ** tail_power
    return (weights / weights.mean()).astype(np.float32)


def check_decoder_inputs(
    decoder: Any, labels: Any, latent_dim: int, n_rows: int, bias: Any = None
) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray | None]:
    """``decoder (d, p)``, ``labels (n, p)`` (float32 CSR: never densified) and the
    logistic decoder's ``bias (p,)`` (or None) as float32, or ``config.decoder``."""
    if decoder is None or labels is None:
        raise ConfigError("config.decoder", "a label loss needs the decoder and the labels")
    D = np.asarray(decoder, dtype=np.float32)
    try:
        V = sp.csr_matrix(
            labels if sp.issparse(labels) else np.asarray(labels, dtype=np.float32),
            dtype=np.float32,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError("config.decoder", f"labels are not a numeric matrix: {exc}") from exc
    if D.ndim != 2 or D.shape[0] != latent_dim or V.shape != (n_rows, D.shape[1]):
        raise ConfigError(
            "config.decoder",
            f"decoder must be ({latent_dim}, p) and labels ({n_rows}, p); "
            f"got {D.shape} and {V.shape}",
        )
    b = None if bias is None else np.asarray(bias, dtype=np.float32)
    if b is not None and b.shape != (D.shape[1],):
        raise ConfigError("config.decoder", f"decoder bias must be ({D.shape[1]},), got {b.shape}")
    if not all(np.isfinite(a).all() for a in (D, V.data, *([] if b is None else [b]))):
        raise ConfigError("config.decoder", "decoder, bias or labels hold NaN or infinity")
    return D, V, b


def decoded_scores(latent: Any, decoder: np.ndarray, bias: np.ndarray | None = None) -> Any:
    """Training-graph label scores ``max(latent, 0) @ decoder`` (+ ``bias``: the logits
    of a logistic decoder); the decoder is frozen."""
    # float32 under any policy: the label loss needs more than bfloat16's precision.
    dense = layers.Dense(
        decoder.shape[1], use_bias=bias is not None, trainable=False, dtype="float32",
        name="train_label_scores",
    )  # fmt: skip
    scores = dense(layers.ReLU(dtype="float32", name="train_latent_clipped")(latent))
    dense.set_weights([decoder] if bias is None else [decoder, bias])
    return scores


def _label_baseline(weights: np.ndarray, labels: Any, bias: np.ndarray | None) -> float:
    """The label term of a trivial prediction: all zeros (squared error) or the bias
    alone (cross-entropy). ``label_weight = 1`` then weighs both terms alike. Summed
    over the non-zeros of ``labels`` (dense or sparse), never densified."""
    if not labels.shape[1]:
        return 1.0
    V = sp.csr_matrix(labels, dtype=np.float64)
    n, p = V.shape
    w = np.asarray(weights, dtype=np.float64)
    if bias is None:  # sum_ij w_j v_ij^2
        total = float(np.sum(w[V.indices] * V.data**2))
    else:  # sum_ij w_j (log(1 + e^b_j) - v_ij b_j)
        b = np.asarray(bias, dtype=np.float64)
        total = n * float(np.sum(w * np.logaddexp(0.0, b))) - float(
            np.sum(w[V.indices] * V.data * b[V.indices])
        )
    return max(total / (n * p), 1e-12)


def label_space_loss(
    latent_dim: int,
    weights: np.ndarray,
    labels: Any,
    label_weight: float,
    aux_dim: int = 0,
    aux_weight: float = 0.0,
    bias: np.ndarray | None = None,
) -> Any:
    """Loss on ``y = [standardised latent | standardised aux codes | labels]``.

    ``aux_dim`` columns of lower-layer codes (``W_1..W_{L-1}``, standardised) follow the
    latent ones and cost ``aux_weight`` times their MSE; ``labels`` may have 0 columns
    (no label term). With ``bias`` (a logistic decoder) the label columns of ``y_pred``
    are logits and cost their binary cross-entropy.
    """
    w = ops.convert_to_tensor(weights.reshape(1, -1), dtype="float32")
    n_labels = labels.shape[1]
    scale = float(label_weight) / _label_baseline(weights, labels, bias)
    d, a = latent_dim, latent_dim + aux_dim

    def loss(y_true: Any, y_pred: Any) -> Any:
        total = ops.mean(ops.square(y_true[:, :d] - y_pred[:, :d]), axis=-1)
        if aux_dim:
            aux = ops.mean(ops.square(y_true[:, d:a] - y_pred[:, d:a]), axis=-1)
            total = total + float(aux_weight) * aux
        if n_labels:
            if bias is None:
                error = ops.square(y_true[:, a:] - y_pred[:, a:])
            else:
                error = ops.binary_crossentropy(y_true[:, a:], y_pred[:, a:], from_logits=True)
            total = total + scale * ops.mean(w * error, axis=-1)
        return total

    return loss


def trainer_outputs(
    head_out: Any,
    latent: Any,
    decoder: np.ndarray | None,
    aux_out: Any = None,
    bias: np.ndarray | None = None,
) -> Any:
    """``[head output | aux codes | decoded scores]`` in one tensor (one target, one loss)."""
    parts = [head_out] if aux_out is None else [head_out, aux_out]
    if decoder is not None:
        parts.append(decoded_scores(latent, decoder, bias))
    return keras.layers.Concatenate(dtype="float32", name="train_outputs")(parts)
