"""Training internals of ``xmlcore.autoencoder``: the tied layer, the start, the losses.

``DeepNonNegativeAutoencoder`` (in ``xmlcore.autoencoder``) is the public model; this
module holds what only its ``fit`` needs: the Keras layer that carries ``H_1..H_L``
(and the logistic loss's label bias), the hierarchical NMF start, the weighted MSE and
cross-entropy losses and the per-epoch monitor that checks ``min(H)`` and computes the
validation loss in numpy.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "EpochMonitor",
    "TiedNonNegativeLayer",
    "initial_weights",
    "prior_logits",
    "reconstruct",
    "sigmoid",
    "weighted_bce",
    "weighted_mse",
]


class TiedNonNegativeLayer(keras.layers.Layer):
    """Holds ``H_1..H_L`` (all ``>= 0``); maps ``V`` to ``V' = V H_1..H_L H_L^T..H_1^T``.

    There are no decoder weights: the decoder multiplies by the transposes of the
    encoder variables, so a gradient step on the decoder moves the encoder too. With
    ``label_bias`` a free per-label bias is added to the output (logits of ``"bce"``).
    """

    def __init__(
        self, shapes: Sequence[tuple[int, int]], label_bias: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.shapes = [tuple(s) for s in shapes]
        self.bias = (
            self.add_weight(shape=(self.shapes[0][0],), initializer="zeros", name="label_bias")
            if label_bias
            else None
        )
        self.H = [
            self.add_weight(
                shape=shape,
                initializer="zeros",
                constraint=keras.constraints.NonNeg(),
                name=f"H{i + 1}",
            )
            for i, shape in enumerate(self.shapes)
        ]

    def set_weights_from(self, arrays: Sequence[np.ndarray], bias: np.ndarray | None) -> None:
        for var, arr in zip(self.H, arrays, strict=True):
            var.assign(np.asarray(arr, dtype="float32"))
        if self.bias is not None and bias is not None:
            self.bias.assign(np.asarray(bias, dtype="float32"))

    def call(self, inputs: Any) -> Any:
        code = inputs
        for h in self.H:
            code = ops.matmul(code, h)
        for h in reversed(self.H):
            code = ops.matmul(code, ops.transpose(h))
        return code if self.bias is None else code + self.bias

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


def initial_weights(
    V: np.ndarray,
    sizes: Sequence[int],
    init: str,
    label_weights: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    sample = V[rng.permutation(V.shape[0])[:4096]]
    if init == "nmf":
        H = _nmf_weights(sample * label_weights, sizes, int(rng.integers(2**31 - 1)))
    else:
        dims = [V.shape[1], *sizes]
        H = [rng.uniform(0.0, 1.0, (a, b)) / np.sqrt(a) for a, b in itertools.pairwise(dims)]
    recon = reconstruct(sample, H)
    # V' is homogeneous of degree 2L in a common scale c of the H_l: pick the c that
    # makes the initial reconstruction the least-squares best multiple of itself.
    alpha = float((sample * recon).sum()) / max(float((recon * recon).sum()), 1e-30)
    c = max(alpha, 1e-12) ** (1.0 / (2 * len(H)))
    return [(c * h).astype(np.float32) for h in H]


def _nmf_weights(V: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Hierarchical NMF start: the parts of ``V``, then the parts of their codes, ...

    A random start leaves the units near-symmetric and gradient descent frees them one
    at a time (long loss plateaus); NMF parts start them apart. Columns get unit norm,
    as in projective NMF where ``V ~ V H H^T`` wants ``H^T H ~ I``; a small positive
    floor keeps every entry trainable.
    """
    H, code = [], V
    for k in sizes:
        nmf = NMF(n_components=k, init="nndsvda", max_iter=20, tol=1e-3, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            nmf.fit(code)
        h = nmf.components_.T
        h = h / np.maximum(np.linalg.norm(h, axis=0, keepdims=True), 1e-12)
        h = h + 1e-3 / np.sqrt(h.shape[0])
        H.append(h)
        code = code @ h
    return H


def reconstruct(
    V: np.ndarray, H: Sequence[np.ndarray], bias: np.ndarray | None = None
) -> np.ndarray:
    """Decoder output before any sigmoid (the logits of ``"bce"``)."""
    code = V
    for h in H:
        code = code @ h
    for h in reversed(H):
        code = code @ h.T
    return code if bias is None else code + bias


def prior_logits(V: np.ndarray) -> np.ndarray:
    """Logit of each label's rate (clipped away from 0 and 1): the bias to start from."""
    rate = np.clip(V.mean(axis=0), 1e-4, 1 - 1e-4)
    return np.log(rate / (1 - rate)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # no overflow warnings


def weighted_mse(weights: np.ndarray) -> Any:
    """Squared error with weight ``w_j`` on every entry of label column ``j``."""
    w = ops.convert_to_tensor(weights.reshape(1, -1), dtype="float32")

    def loss(y_true: Any, y_pred: Any) -> Any:
        return ops.mean(w * ops.square(y_true - y_pred), axis=-1)

    return loss


def weighted_bce(weights: np.ndarray) -> Any:
    """Binary cross-entropy from logits, weight ``w_j`` on label column ``j``."""
    w = ops.convert_to_tensor(weights.reshape(1, -1), dtype="float32")

    def loss(y_true: Any, logits: Any) -> Any:
        return ops.mean(w * ops.binary_crossentropy(y_true, logits, from_logits=True), axis=-1)

    return loss


class EpochMonitor(keras.callbacks.Callback):
    """After each epoch: records ``min(H)`` and writes the validation loss into the logs.

    The validation loss is computed in numpy from the current ``H_l``: a Keras
    validation pass costs tens of milliseconds of pipeline set-up per epoch, which
    dominated training time on small label matrices.
    """

    def __init__(
        self,
        valid: np.ndarray | None,
        label_weights: np.ndarray,
        loss: str,
        prior: np.ndarray | None,
    ) -> None:
        super().__init__()
        self.valid = valid
        self.label_weights = label_weights
        self.kind = "bce" if loss == "bce" else "mse"
        self.prior = prior
        self.mins: list[float] = []

    def baseline(self, V: np.ndarray) -> float:
        """The natural scale of this loss: an all-zero reconstruction (MSE) or every
        label at its rate (BCE, the bias alone)."""
        start = np.zeros_like(V) if self.prior is None else np.broadcast_to(self.prior, V.shape)
        return _numpy_loss(V, start, self.label_weights, self.kind)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        layer = self.model.get_layer("tied_nonneg")
        H = [np.asarray(ops.convert_to_numpy(w), dtype=np.float64) for w in layer.H]
        self.mins.append(min(float(h.min()) for h in H))
        if logs is not None:  # in the logs, so the history (and a checkpoint's) has it
            logs["min_h"] = self.mins[-1]
        if self.valid is not None and logs is not None:
            bias = None if layer.bias is None else ops.convert_to_numpy(layer.bias)
            logs["val_loss"] = _numpy_loss(
                self.valid, reconstruct(self.valid, H, bias), self.label_weights, self.kind
            )


def _numpy_loss(V: np.ndarray, out: np.ndarray, label_weights: np.ndarray, kind: str) -> float:
    """Weighted mean loss of the decoder output ``out`` (logits for ``"bce"``)."""
    # BCE from logits is log(1 + e^x) - v x; logaddexp keeps it from overflowing
    per_entry = np.logaddexp(0.0, out) - V * out if kind == "bce" else (V - out) ** 2
    return float(np.mean(label_weights[None, :] * per_entry))
