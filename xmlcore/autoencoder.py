"""Deep non-negative autoencoder with tied weights (Kang et al., section 3).

The label matrix ``V`` (n, p) of 0/1 entries is encoded layer by layer,
``W_1 = V H_1``, ``W_l = W_{l-1} H_l``, and decoded with the transposes of the SAME
matrices, ``V' = W_L H_L^T ... H_1^T``. Every ``H_l`` is projected onto ``H >= 0`` after
every optimiser step (``keras.constraints.NonNeg`` on the variables), so every code
``W_l`` is non-negative and column ``j`` of ``H_l`` reads as a part-based "label set".

Training uses Keras 3 (``keras.ops`` only: run on the TensorFlow and PyTorch backends;
nothing backend-specific for JAX). ``V`` stays a scipy CSR matrix end to end: the fit
reads it through ``LabelBatches`` (rows sliced and densified one mini-batch at a
time), and the start, the validation loss, the codes and the reconstruction error go
through it in row blocks, so memory grows with its non-zeros, not with n x p
(``bench/label_memory.py``). Below ``DENSE_ENTRIES`` (2^24 entries, 64 MB) the fit
and the NMF start take V dense, as before, so small matrices give the models they
gave. A dense ``V`` is compressed first and gives the same model. Prediction is plain
numpy matmuls with the learned ``H_``, cheap and backend-independent.

Losses:
- ``"mse"``: the paper's Frobenius reconstruction error (mean over entries).
- ``"propensity_mse"``: tail-aware. The squared error of label column ``j`` is weighted
  by ``(1 / propensity_j) ** tail_power`` (Jain et al. 2016 propensity, A=0.55, B=1.5),
  normalised to mean 1, and the NMF start (below) factorises the same re-weighted
  matrix. Rare labels then earn a share of the bottleneck instead of being averaged
  away. Weighting only the positive entries was tried and lost: it inflates rare
  labels' scores in every row and costs precision for no real PSP@k gain. The gain is
  bounded by the bottleneck: on a planted power-law matrix ``bench/autoencoder_tail.py``
  measures about +4% PSP@5 at -0.005 P@5 (tail_power=1), level with the best
  unconstrained rank-k_L linear decoder. ``tail_power=0`` is plain MSE.
- ``"bce"``: logistic. The decoder gets a per-label bias (``label_bias_``, free sign,
  started at the logit of each label's rate) and a sigmoid, ``V' = sigmoid(W_L
  H_L^T ... H_1^T + b)``, fitted with binary cross-entropy. The bias carries each
  label's base rate, so the non-negative units no longer spend themselves on the
  frequent labels and model the co-occurrence instead, and a rare label is not averaged
  to zero by a squared error on 0/1 entries. Encoding is unchanged (``W_L = V H_1 ...
  H_L``, so the hierarchy reads the same way). With the true labels as input (the
  decoder's ceiling, 60-label ``small`` preset, 3 seeds) it reached P@5 0.846 / PSP@5
  0.808 against 0.837 / 0.782 for ``"mse"`` and 0.838 / 0.783 for NMF at the same k.
  From images, with the small from-scratch CNN, it is level with ``"mse"`` within the
  noise: two-step P@5 0.581 against 0.577 (4 paired seeds, gap +0.0045 with a standard
  error of 0.0054; ``bench/xml_quality.py``, docs/BENCHMARKS.md). An option, not the
  default.

Initialisation (``init``): ``"nmf"`` (default) starts ``H_1`` from a short NMF of
``V`` (nndsvda, 20 iterations, on at most 4,096 rows) and each deeper ``H_l`` from an NMF
of the previous code; ``"random"`` draws uniform ``[0, 1/sqrt(fan_in))``. Either way all
layers are then rescaled by one common factor so the initial reconstruction has the
least-squares optimal magnitude. From a random start the units are near-symmetric and
Adam frees them one at a time (long loss plateaus): on a 3,379 x 708 planted matrix the
NMF start reached in ~15 epochs a validation loss 20% below what the random start
reached after 168.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp
from keras import ops

from xmlcore.autoencoder_training import (
    DENSE_ENTRIES,
    EpochMonitor,
    LabelBatches,
    TiedNonNegativeLayer,
    dense_blocks,
    initial_weights,
    prior_logits,
    sigmoid,
    weighted_bce,
    weighted_mse,
)
from xmlcore.checkpoint import (
    EpochCheckpointer,
    ResumableEarlyStopping,
    SaveCheckpoint,
    StageCheckpoint,
    resumable_fit,
)
from xmlcore.errors import ConfigError, ModelError
from xmlcore.metrics import propensities

LOSSES = ("mse", "propensity_mse", "bce")
INITS = ("nmf", "random")
STATE_FORMAT = "xmlcore.DeepNonNegativeAutoencoder/1"
_CONFIG_KEYS = (
    "layer_sizes",
    "loss",
    "tail_power",
    "init",
    "epochs",
    "batch_size",
    "learning_rate",
    "patience",
    "tol",
    "validation_fraction",
    "seed",
    "verbose",
)


PAPER_LAYER_SIZES = (64, 16)


def default_layer_sizes(n_labels: int) -> tuple[int, ...]:
    """Half the vocabulary, then half of that, capped at the paper's (64, 16).

    A vocabulary of p labels needs a first layer smaller than p (the code must
    compress) and a second smaller than the first. From p = 128 up this is the paper's
    (64, 16). Below, a wide code pays: on the 60-label ``small`` preset the two-step
    model's P@5 from images was 0.547 at (p/4, p/8) = (15, 7), 0.560 at (18, 9) and
    0.576-0.598 at (24..32, 15..16) (2 seeds each, ``bench/xml_quality.py``,
    docs/BENCHMARKS.md); NMF with the same k gained as much.
    """
    first = min(PAPER_LAYER_SIZES[0], max(2, n_labels // 2))
    return (first, min(PAPER_LAYER_SIZES[1], max(1, first // 2)))


def check_label_matrix(V: Any, *, min_rows: int = 1) -> sp.csr_matrix:
    """Validate a label matrix (dense or scipy sparse, 2-D, finite, >= 0) -> float32 CSR.

    Never densified: a sparse ``V`` is copied as it is (memory ~ nnz), a dense one is
    compressed. Duplicates are summed, explicit zeros dropped and indices sorted, so a
    dense and a sparse copy of the same labels give the same matrix, bit for bit.
    """
    if sp.issparse(V):
        if V.ndim != 2:
            raise ConfigError("autoencoder.bad_input", f"expected a 2-D matrix, got {V.ndim}-D")
        X = sp.csr_matrix(V, dtype=np.float32, copy=True)
    else:
        try:
            arr = np.asarray(V, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ConfigError("autoencoder.bad_input", f"not a numeric matrix: {exc}") from exc
        if arr.ndim != 2:
            raise ConfigError(
                "autoencoder.bad_input", f"expected a 2-D (n, p) matrix, got shape {arr.shape}"
            )
        X = sp.csr_matrix(arr)
    X.sum_duplicates()
    X.eliminate_zeros()
    X.sort_indices()
    if not np.isfinite(X.data).all():
        raise ConfigError("autoencoder.not_finite", "the label matrix holds NaN or infinity")
    if X.nnz and X.data.min() < 0:
        raise ConfigError("autoencoder.negative_input", "the label matrix must be non-negative")
    if X.shape[0] < min_rows or X.shape[1] < 1:
        raise ConfigError(
            "autoencoder.too_few_rows",
            f"need at least {min_rows} rows and 1 column, got shape {X.shape}",
        )
    return X


class DeepNonNegativeAutoencoder:
    """Tied-weight deep non-negative autoencoder for 0/1 label matrices.

    Parameters: ``layer_sizes`` (k_1 > ... > k_L, all < p; paper (64, 16)), ``loss``
    (``"mse"``, ``"propensity_mse"`` or ``"bce"``), ``tail_power`` (exponent on the inverse
    propensity weights of ``"propensity_mse"``), ``epochs``, ``batch_size``,
    ``learning_rate`` (Adam), ``patience`` and ``tol`` (early stopping: an epoch
    counts as progress when the validation loss -- training loss when
    ``validation_fraction * n < 1`` -- drops by ``tol`` times the loss of an all-zero
    reconstruction; the best weights are restored),
    ``seed`` (same seed, same data -> same ``H_``), ``verbose`` (Keras fit verbosity).

    Learned: ``H_`` list of float32 arrays ``(p, k_1), (k_1, k_2), ...`` all ``>= 0``;
    ``label_bias_`` ``(p,)`` float32 for ``"bce"`` (``None`` otherwise);
    ``history_`` dict of per-epoch ``loss`` (and ``val_loss``) plus ``min_h`` (the
    smallest entry of any ``H_l`` at the end of each epoch).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int] = (64, 16),
        loss: str = "mse",
        tail_power: float = 1.0,
        init: str = "nmf",
        epochs: int = 300,
        batch_size: int = 256,
        learning_rate: float = 0.01,
        patience: int = 10,
        tol: float = 1e-3,
        validation_fraction: float = 0.1,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        self.layer_sizes = tuple(layer_sizes)
        self.loss = loss
        self.tail_power = tail_power
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.verbose = verbose

    # -- configuration -------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as plain JSON-friendly values."""
        params = {key: getattr(self, key) for key in _CONFIG_KEYS}
        params["layer_sizes"] = [int(k) for k in self.layer_sizes]
        return params

    def _check_params(self, n_labels: int) -> None:
        sizes = self.layer_sizes
        ok = (
            len(sizes) >= 1
            and all(isinstance(k, int | np.integer) and k >= 1 for k in sizes)
            and all(a > b for a, b in itertools.pairwise(sizes))
            and sizes[0] < n_labels
        )
        if not ok:
            raise ConfigError(
                "autoencoder.bad_layer_sizes",
                f"layer_sizes must be positive integers, strictly decreasing and smaller "
                f"than the number of labels p={n_labels}; got {list(sizes)}",
            )
        if self.init not in INITS:
            raise ConfigError("autoencoder.bad_init", f"init must be one of {INITS}")
        if self.loss not in LOSSES:
            raise ConfigError("autoencoder.bad_loss", f"loss must be one of {LOSSES}")
        numbers = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "patience": self.patience >= 0,
            "tol": self.tol >= 0,
            "validation_fraction": 0 <= self.validation_fraction < 1,
            "tail_power": np.isfinite(self.tail_power) and self.tail_power >= 0,
        }
        bad = [name for name, good in numbers.items() if not good]
        if bad:
            raise ConfigError("autoencoder.bad_param", f"out of range: {', '.join(bad)}")

    # -- training ------------------------------------------------------------------

    def fit(
        self,
        V: Any,
        *,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        checkpoint: SaveCheckpoint | None = None,
        resume: StageCheckpoint | None = None,
    ) -> DeepNonNegativeAutoencoder:
        """Learn ``H_`` from a label matrix ``V`` (n >= 2, p) of non-negative entries.

        ``callbacks`` are extra Keras callbacks (progress reporting, per-step checks);
        ``checkpoint(state)`` is called after every epoch and ``resume`` carries on from
        such a state (``xmlcore.checkpoint``).
        """
        X = check_label_matrix(V, min_rows=2)
        self._check_params(X.shape[1])
        keras.utils.set_random_seed(int(self.seed))
        rng = np.random.default_rng(self.seed)
        weights = self._label_weights(X)
        bias = prior_logits(X) if self.loss == "bce" else None
        # Computed on a resume too: the split below draws from the same generator.
        model = self._build(
            X.shape[1], initial_weights(X, self.layer_sizes, self.init, weights, rng), bias
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss=weighted_bce(weights) if self.loss == "bce" else weighted_mse(weights),
        )
        train, valid = self._split(X, rng)
        monitor = EpochMonitor(valid, weights, self.loss, bias)
        stopper = ResumableEarlyStopping(
            monitor="loss" if valid is None else "val_loss",
            patience=self.patience,
            min_delta=self.tol * monitor.baseline(train),
            restore_best_weights=True,
        )
        prior = None if resume is None else resume.history
        saver = EpochCheckpointer("autoencoder", checkpoint, stopper, history=prior)

        def fit(initial_epoch: int) -> None:
            # the rows of every epoch's batches follow from (seed, epoch), so a resumed
            # fit reads the batches an uninterrupted one would (Keras then shuffles the
            # batches' order from the Python RNG it seeds)
            fitted = [monitor, stopper, saver, *callbacks]
            if train.shape[0] * train.shape[1] <= DENSE_ENTRIES:  # small: Keras' own shuffle
                dense = train.toarray()
                model.fit(
                    dense, dense, epochs=self.epochs, batch_size=self.batch_size, shuffle=True,
                    callbacks=fitted, verbose=self.verbose, initial_epoch=initial_epoch,
                )  # fmt: skip
                return
            batches = LabelBatches(train, self.batch_size, self.seed, initial_epoch)
            model.fit(
                batches, epochs=self.epochs, callbacks=fitted, verbose=self.verbose,
                initial_epoch=initial_epoch,
            )  # fmt: skip

        history = resumable_fit(model, fit, saver, resume, self.epochs)
        layer = model.get_layer("tied_nonneg")
        self.H_ = [np.asarray(ops.convert_to_numpy(h), dtype=np.float32) for h in layer.H]
        self.label_bias_ = (
            None if layer.bias is None else np.asarray(ops.convert_to_numpy(layer.bias), np.float32)
        )
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.items()}
        return self

    def _label_weights(self, X: sp.csr_matrix) -> np.ndarray:
        if self.loss != "propensity_mse":
            return np.ones(X.shape[1], dtype=np.float32)
        weights = (1.0 / propensities(X)) ** self.tail_power
        # Mean 1: the loss stays on the scale of plain MSE, so learning_rate and tol
        # mean the same for every tail_power.
        return (weights / weights.mean()).astype(np.float32)

    def _split(self, X: sp.csr_matrix, rng: np.random.Generator) -> tuple[sp.csr_matrix, Any]:
        n_valid = int(self.validation_fraction * X.shape[0])
        if n_valid < 1 or X.shape[0] - n_valid < 1:
            return X, None
        order = rng.permutation(X.shape[0])
        return X[order[n_valid:]], X[order[:n_valid]]

    def _build(
        self, n_labels: int, weights: Sequence[np.ndarray], bias: np.ndarray | None
    ) -> keras.Model:
        dims = [n_labels, *self.layer_sizes]
        layer = TiedNonNegativeLayer(
            list(itertools.pairwise(dims)), label_bias=bias is not None, name="tied_nonneg"
        )
        inputs = keras.Input(shape=(n_labels,), name="labels")
        model = keras.Model(inputs, layer(inputs), name="deep_nonneg_autoencoder")
        layer.set_weights_from(weights, bias)
        return model

    def fit_transform(self, V: Any) -> np.ndarray:
        """``fit(V)`` then ``transform(V)``."""
        return self.fit(V).transform(V)

    # -- prediction (numpy, backend-independent) -------------------------------------

    def _fitted(self) -> list[np.ndarray]:
        H = getattr(self, "H_", None)
        if H is None:
            raise ModelError("autoencoder.not_fitted", "call fit() or from_state() first")
        return H

    def codes(self, V: Any) -> list[np.ndarray]:
        """Every layer's code ``[W_1, ..., W_L]``, float32, all ``>= 0``."""
        H = self._fitted()
        X = check_label_matrix(V)
        if X.shape[1] != H[0].shape[0]:
            raise ConfigError(
                "autoencoder.shape_mismatch",
                f"V has {X.shape[1]} label columns, the autoencoder was fitted on {H[0].shape[0]}",
            )
        out, code = [], X
        for h in H:
            code = np.asarray(code @ h, dtype=np.float32)  # sparse @ dense: (n, k_l) dense
            out.append(code)
        return out

    def transform(self, V: Any) -> np.ndarray:
        """Latent label vectors ``W_L`` (n, k_L), float32, ``>= 0``."""
        return self.codes(V)[-1]

    def decoder_matrix(self) -> np.ndarray:
        """``H_L^T ... H_1^T`` (k_L, p): label scores are ``W_L @ decoder_matrix()``."""
        H = self._fitted()
        D = H[-1].T
        for h in reversed(H[:-1]):
            D = D @ h.T
        return D

    @property
    def output_activation(self) -> str:
        """``"sigmoid"`` for ``"bce"`` (scores are probabilities), else ``"linear"``."""
        return "sigmoid" if getattr(self, "label_bias_", None) is not None else "linear"

    def decoder_bias(self) -> np.ndarray:
        """The per-label bias ``(p,)`` added before the output activation (0 for MSE)."""
        bias = getattr(self, "label_bias_", None)
        return np.zeros(self._fitted()[0].shape[0], np.float32) if bias is None else bias

    def inverse_transform(self, W: Any) -> np.ndarray:
        """Label scores ``(n, p)`` from latent vectors ``(n, k_L)``: ``W_L H_L^T ...
        H_1^T``, plus ``label_bias_`` through a sigmoid for ``"bce"``."""
        D = self.decoder_matrix()
        arr = np.asarray(W, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != D.shape[0] or not np.isfinite(arr).all():
            raise ConfigError(
                "autoencoder.shape_mismatch",
                f"expected finite latent vectors of shape (n, {D.shape[0]}), got {arr.shape}",
            )
        if self.output_activation == "linear":
            return arr @ D
        return sigmoid(arr @ D + self.decoder_bias())

    def reconstruction_error(self, V: Any) -> float:
        """Mean squared error per entry of ``V`` against its reconstruction."""
        X = check_label_matrix(V)
        total = 0.0
        for start, block in dense_blocks(X):
            recon = self.inverse_transform(self.transform(X[start : start + len(block)]))
            total += float(np.sum((block - recon) ** 2, dtype=np.float64))
        return total / max(X.shape[0] * X.shape[1], 1)

    def keras_model(self) -> keras.Model:
        """A Keras model ``V -> V'`` holding the fitted ``H_`` (for gradients, export)."""
        H = self._fitted()
        model = self._build(H[0].shape[0], H, getattr(self, "label_bias_", None))
        if self.output_activation == "linear":
            return model
        probabilities = keras.layers.Activation("sigmoid", name="probabilities")(model.output)
        return keras.Model(model.input, probabilities, name=model.name)

    # -- persistence (plain arrays + config, no pickled Keras objects) ---------------

    def get_state(self) -> dict[str, Any]:
        """``{"format", "config", "weights": [H_1..H_L], "label_bias", "history"}``."""
        bias = getattr(self, "label_bias_", None)
        return {
            "format": STATE_FORMAT,
            "config": self.get_params(),
            "weights": [h.copy() for h in self._fitted()],
            "label_bias": None if bias is None else bias.copy(),
            "history": {k: list(v) for k, v in getattr(self, "history_", {}).items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DeepNonNegativeAutoencoder:
        """Rebuild a fitted autoencoder from ``get_state()``; checks shapes and signs."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ModelError("autoencoder.bad_state", f"expected a {STATE_FORMAT} state dict")
        config = dict(state.get("config", {}))
        unknown = set(config) - set(_CONFIG_KEYS)
        if unknown:
            raise ModelError("autoencoder.bad_state", f"unknown config keys {sorted(unknown)}")
        ae = cls(**config)
        H = [np.asarray(h, dtype=np.float32) for h in state.get("weights", [])]
        chain_ok = bool(H) and all(h.ndim == 2 for h in H)
        chain_ok = chain_ok and all(a.shape[1] == b.shape[0] for a, b in itertools.pairwise(H))
        if not chain_ok or [h.shape[1] for h in H] != list(ae.layer_sizes):
            raise ModelError("autoencoder.bad_state", "weights do not match layer_sizes")
        if any(not np.isfinite(h).all() or h.min() < 0 for h in H):
            raise ModelError("autoencoder.bad_state", "weights must be finite and >= 0")
        ae.H_ = H
        ae.label_bias_ = _checked_bias(state.get("label_bias"), ae.loss, H[0].shape[0])
        ae.history_ = {k: list(v) for k, v in state.get("history", {}).items()}
        return ae


def _checked_bias(bias: Any, loss: str, n_labels: int) -> np.ndarray | None:
    """The saved label bias: present exactly for ``"bce"``, ``(p,)`` and finite."""
    if (bias is None) != (loss != "bce"):
        raise ModelError("autoencoder.bad_state", f"label_bias does not match loss {loss!r}")
    if bias is None:
        return None
    arr = np.asarray(bias, dtype=np.float32)
    if arr.shape != (n_labels,) or not np.isfinite(arr).all():
        raise ModelError("autoencoder.bad_state", f"label_bias must be finite ({n_labels},)")
    return arr
