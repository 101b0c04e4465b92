"""Training internals of ``xmlcore.autoencoder``: the tied layer, the start, the losses.

``DeepNonNegativeAutoencoder`` (in ``xmlcore.autoencoder``) is the public model; this
module holds what only its ``fit`` needs: the Keras layer that carries ``H_1..H_L``
(and the logistic loss's label bias), the hierarchical NMF start, the weighted MSE and
cross-entropy losses, the per-epoch monitor that checks ``min(H)`` and computes the
validation loss in numpy, and ``LabelBatches``, which feeds a CSR label matrix to
Keras one densified mini-batch at a time. Every function here takes ``V`` as float32
CSR and densifies at most a block of rows at once (``dense_blocks``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp
from keras import ops
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "EpochMonitor",
    "LabelBatches",
    "TiedNonNegativeLayer",
    "dense_blocks",
    "initial_weights",
    "prior_logits",
    "reconstruct",
    "sigmoid",
    "weighted_bce",
    "weighted_mse",
]


# entries of V densified at once outside a mini-batch (4 MB of float32)
BLOCK_ENTRIES = 1 << 20
# Up to this many entries (64 MB of float32) the fit and the NMF start take V dense,
# as before issue 12's streaming, so small label matrices train the very models they
# did (the streamed batch order is another draw: on the 14-label digits preset the
# two-step P@3 moved by up to 0.08 per seed with it). Past it, memory ~ nnz.
DENSE_ENTRIES = 1 << 24


def dense_blocks(
    V: sp.csr_matrix, entries: int = BLOCK_ENTRIES
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, dense float32 rows)`` of ``V`` in blocks of about ``entries``."""
    rows = max(1, entries // max(V.shape[1], 1))
    for start in range(0, V.shape[0], rows):
        yield start, V[start : start + rows].toarray().astype(np.float32, copy=False)


class LabelBatches(keras.utils.PyDataset):
    """``(V_b, V_b)`` mini-batches of a CSR label matrix, densified one batch at a time.

    Epoch ``e`` cuts its batches from the row order ``permutation(seed, e)``: the same
    for a dense and a sparse copy of ``V`` and for a fit resumed at ``e``
    (``first_epoch``); Keras shuffles the order of the batches themselves.
    One worker (no prefetch threads): slicing CSR rows costs far less than the step.
    """

    def __init__(self, V: sp.csr_matrix, batch_size: int, seed: int, first_epoch: int = 0):
        super().__init__()
        self.V = V
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._next_epoch = int(first_epoch)
        self._order = self._permutation(self._next_epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.V.shape[0])

    def __len__(self) -> int:
        return math.ceil(self.V.shape[0] / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.V[rows].toarray().astype(np.float32, copy=False)
        return batch, batch

    def on_epoch_begin(self) -> None:
        self._order = self._permutation(self._next_epoch)
        self._next_epoch += 1


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
    V: sp.csr_matrix,
    sizes: Sequence[int],
    init: str,
    label_weights: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    sample = V[rng.permutation(V.shape[0])[:4096]]
    if init == "nmf":
        weighted: Any = sp.csr_matrix(sample @ sp.diags(label_weights.astype(np.float32)))
        if weighted.shape[0] * weighted.shape[1] <= DENSE_ENTRIES:
            weighted = weighted.toarray()  # small: the dense NMF of before, to the bit
        H = _nmf_weights(weighted, sizes, int(rng.integers(2**31 - 1)))
    else:
        dims = [V.shape[1], *sizes]
        H = [rng.uniform(0.0, 1.0, (a, b)) / np.sqrt(a) for a, b in itertools.pairwise(dims)]
    # V' is homogeneous of degree 2L in a common scale c of the H_l: pick the c that
    # makes the initial reconstruction the least-squares best multiple of itself.
    dot = square = 0.0
    for start, block in dense_blocks(sample):
        recon = reconstruct(sample[start : start + len(block)], H)
        dot += float((block * recon).sum())
        square += float((recon * recon).sum())
    alpha = dot / max(square, 1e-30)
    c = max(alpha, 1e-12) ** (1.0 / (2 * len(H)))
    return [(c * h).astype(np.float32) for h in H]


def _nmf_weights(V: Any, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Hierarchical NMF start: the parts of ``V``, then the parts of their codes, ...

    A random start leaves the units near-symmetric and gradient descent frees them one
    at a time (long loss plateaus); NMF parts start them apart. Columns get unit norm,
    as in projective NMF where ``V ~ V H H^T`` wants ``H^T H ~ I``; a small positive
    floor keeps every entry trainable.
    """
    H: list[np.ndarray] = []
    code: Any = V  # sparse labels, then the dense codes
    for k in sizes:
        nmf = NMF(n_components=k, init="nndsvda", max_iter=20, tol=1e-3, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            nmf.fit(code)
        h = nmf.components_.T
        h = h / np.maximum(np.linalg.norm(h, axis=0, keepdims=True), 1e-12)
        h = h + 1e-3 / np.sqrt(h.shape[0])
        H.append(h)
        code = np.asarray(code @ h)
    return H


def reconstruct(V: Any, H: Sequence[np.ndarray], bias: np.ndarray | None = None) -> np.ndarray:
    """Decoder output before any sigmoid (the logits of ``"bce"``), dense ``(n, p)``;
    ``V`` dense or sparse (keep it to a block of rows)."""
    code = V
    for h in H:
        code = np.asarray(code @ h)
    for h in reversed(H):
        code = code @ h.T
    return code if bias is None else code + bias


def prior_logits(V: sp.csr_matrix) -> np.ndarray:
    """Logit of each label's rate (clipped away from 0 and 1): the bias to start from."""
    rate = np.clip(np.asarray(V.sum(axis=0), dtype=np.float64).ravel() / V.shape[0], 1e-4, 1 - 1e-4)
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
        valid: sp.csr_matrix | None,
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

    def baseline(self, V: sp.csr_matrix) -> float:
        """The natural scale of this loss: an all-zero reconstruction (MSE) or every
        label at its rate (BCE, the bias alone)."""
        total = 0.0
        for _, block in dense_blocks(V):
            start = (
                np.zeros_like(block)
                if self.prior is None
                else np.broadcast_to(self.prior, block.shape)
            )
            total += _loss_sum(block, start, self.label_weights, self.kind)
        return total / max(V.shape[0] * V.shape[1], 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        layer = self.model.get_layer("tied_nonneg")
        H = [np.asarray(ops.convert_to_numpy(w), dtype=np.float64) for w in layer.H]
        self.mins.append(min(float(h.min()) for h in H))
        if logs is not None:  # in the logs, so the history (and a checkpoint's) has it
            logs["min_h"] = self.mins[-1]
        if self.valid is not None and logs is not None:
            bias = None if layer.bias is None else ops.convert_to_numpy(layer.bias)
            total = 0.0
            for start, block in dense_blocks(self.valid):
                out = reconstruct(self.valid[start : start + len(block)], H, bias)
                total += _loss_sum(block, out, self.label_weights, self.kind)
            logs["val_loss"] = total / max(self.valid.shape[0] * self.valid.shape[1], 1)


def _loss_sum(V: np.ndarray, out: np.ndarray, label_weights: np.ndarray, kind: str) -> float:
    """Weighted summed loss of the decoder output ``out`` (logits for ``"bce"``) on a
    dense block of rows; divided by n p it is the mean the Keras loss computes."""
    # BCE from logits is log(1 + e^x) - v x; logaddexp keeps it from overflowing
    per_entry = np.logaddexp(0.0, out) - V * out if kind == "bce" else (V - out) ** 2
    return float(np.sum(label_weights[None, :] * per_entry, dtype=np.float64))
