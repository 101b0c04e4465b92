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
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

from xmlcore.errors import ConfigError
from xmlcore.metrics import propensities

LABEL_LOSSES = ("none", "mse", "propensity_mse")

__all__ = ["LABEL_LOSSES", "check_decoder_inputs", "label_space_loss", "label_weights"]


def label_weights(labels: np.ndarray, kind: str, tail_power: float) -> np.ndarray:
    """Per-label weights ``(p,)`` float32 with mean 1 (all ones for ``"mse"``)."""
    if kind != "propensity_mse" or labels.shape[0] < 3:
        return np.ones(labels.shape[1], dtype=np.float32)
    weights = (1.0 / propensities(labels)) ** tail_power
    return (weights / weights.mean()).astype(np.float32)


def check_decoder_inputs(
    decoder: Any, labels: Any, latent_dim: int, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``decoder (d, p)`` and ``labels (n, p)`` as float32, or ``config.decoder``."""
    if decoder is None or labels is None:
        raise ConfigError("config.decoder", "a label loss needs the decoder and the labels")
    D = np.asarray(decoder, dtype=np.float32)
    V = np.asarray(labels.toarray() if hasattr(labels, "toarray") else labels, dtype=np.float32)
    if D.ndim != 2 or D.shape[0] != latent_dim or V.shape != (n_rows, D.shape[1]):
        raise ConfigError(
            "config.decoder",
            f"decoder must be ({latent_dim}, p) and labels ({n_rows}, p); "
            f"got {D.shape} and {V.shape}",
        )
    if not (np.isfinite(D).all() and np.isfinite(V).all()):
        raise ConfigError("config.decoder", "decoder or labels hold NaN or infinity")
    return D, V


def decoded_scores(latent: Any, decoder: np.ndarray) -> Any:
    """Training-graph label scores ``max(latent, 0) @ decoder`` (decoder frozen)."""
    dense = layers.Dense(
        decoder.shape[1], use_bias=False, trainable=False, name="train_label_scores"
    )
    scores = dense(layers.ReLU(name="train_latent_clipped")(latent))
    dense.set_weights([decoder])
    return scores


def label_space_loss(
    latent_dim: int,
    weights: np.ndarray,
    labels: np.ndarray,
    label_weight: float,
    aux_dim: int = 0,
    aux_weight: float = 0.0,
) -> Any:
    """Loss on ``y = [standardised latent | standardised aux codes | labels]``.

    ``aux_dim`` columns of lower-layer codes (``W_1..W_{L-1}``, standardised) follow the
    latent ones and cost ``aux_weight`` times their MSE; ``labels`` may have 0 columns
    (no label term).
    """
    w = ops.convert_to_tensor(weights.reshape(1, -1), dtype="float32")
    n_labels = labels.shape[1]
    baseline = max(float(np.mean(weights[None, :] * labels**2)) if n_labels else 0.0, 1e-12)
    scale = float(label_weight) / baseline
    d, a = latent_dim, latent_dim + aux_dim

    def loss(y_true: Any, y_pred: Any) -> Any:
        total = ops.mean(ops.square(y_true[:, :d] - y_pred[:, :d]), axis=-1)
        if aux_dim:
            aux = ops.mean(ops.square(y_true[:, d:a] - y_pred[:, d:a]), axis=-1)
            total = total + float(aux_weight) * aux
        if n_labels:
            label = ops.mean(w * ops.square(y_true[:, a:] - y_pred[:, a:]), axis=-1)
            total = total + scale * label
        return total

    return loss


def trainer_outputs(
    head_out: Any, latent: Any, decoder: np.ndarray | None, aux_out: Any = None
) -> Any:
    """``[head output | aux codes | decoded scores]`` in one tensor (one target, one loss)."""
    parts = [head_out] if aux_out is None else [head_out, aux_out]
    if decoder is not None:
        parts.append(decoded_scores(latent, decoder))
    return keras.layers.Concatenate(name="train_outputs")(parts)
