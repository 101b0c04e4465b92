"""The image model of the two-step method: a CNN that regresses the latent label vector.

``LatentLabelRegressor`` puts a new dense head with an IDENTITY output of size d on a
backbone (VGG16 in the paper, see ``xmlcore.backbones``) whose top ``fine_tune_layers``
conv layers are trained, and fits it with mean squared error to W_L, the autoencoder's
latent codes. ``ImageNetwork`` holds everything the regressor shares with the
binary-relevance baseline (same body, same training loop), so comparisons are fair.

Target scaling (``target_scaling="std"``, the default): latent units differ in scale by
orders of magnitude, and a plain MSE would then fit only the largest ones. The head
therefore learns standardised targets ``(W_L - mean) / std`` and a fixed, non-trainable
``FixedAffine`` layer maps them back (``* std + mean``), so ``model_`` outputs W_L in its
own units and no caller has to undo anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Self

import keras
import numpy as np
from keras import layers

from xmlcore.allocator import MallocGuard
from xmlcore.backbones import BACKBONES, build_backbone, set_fine_tuning
from xmlcore.checkpoint import (
    EpochCheckpointer,
    ResumableEarlyStopping,
    SaveCheckpoint,
    StageCheckpoint,
    resumable_fit,
)
from xmlcore.device import jit_compile
from xmlcore.errors import ConfigError, ModelError
from xmlcore.label_loss import (
    LABEL_LOSSES,
    check_decoder_inputs,
    label_space_loss,
    label_weights,
    trainer_outputs,
)
from xmlcore.pipeline import ArrayBatches, ImageBatches, SparseTargets, take_rows

__all__ = [
    "FixedAffine",
    "ImageBatches",
    "ImageNetwork",
    "LatentLabelRegressor",
    "build_backbone",
    "set_fine_tuning",
]

EpochCallback = Callable[[int, dict[str, float]], None]


@keras.saving.register_keras_serializable(package="xmlcore")
class FixedAffine(layers.Layer):
    """``x * scale + offset`` with constant per-unit vectors (stored, never trained)."""

    def __init__(self, scale: Sequence[float], offset: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = [float(v) for v in scale]
        self.offset = [float(v) for v in offset]

    def call(self, inputs: Any) -> Any:
        scale = keras.ops.convert_to_tensor(self.scale, dtype=inputs.dtype)
        return inputs * scale + keras.ops.convert_to_tensor(self.offset, dtype=inputs.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class ImageNetwork:
    """A backbone + dense head trained on raw-pixel images; subclasses pick output and loss.

    ``fit(images, targets)``: ``images`` uint8 ``(n, H, W, 3)`` or an ``ImageBatches``
    (then ``targets`` may come from it). ``predict(images) -> (n, d)`` float32. Learned
    state: ``model_`` (raw 0..255 float32 pixels in), ``history_`` (per-epoch lists),
    ``output_dim_``, ``image_size_``.
    """

    activation = "linear"
    loss = "mse"

    def __init__(
        self,
        base: str = "small",
        weights: str = "none",
        image_size: tuple[int, int] | None = (64, 64),
        fine_tune_layers: int = 2,
        head_units: Sequence[int] = (256,),
        dropout: float = 0.2,
        epochs: int = 30,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        patience: int = 5,
        validation_split: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        verbose: int = 0,
        alpha: float = 1.0,
    ) -> None:
        self.base = base
        self.weights = weights
        self.image_size = None if image_size is None else tuple(int(v) for v in image_size)
        self.fine_tune_layers = fine_tune_layers
        self.head_units = tuple(int(u) for u in head_units)
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.validation_split = validation_split
        self.seed = seed
        self.augment = augment
        self.verbose = verbose
        self.alpha = alpha

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as plain JSON values (round-trips through ``__init__``)."""
        names = list(inspect.signature(ImageNetwork.__init__).parameters)[1:]
        params = {name: getattr(self, name) for name in names}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    @classmethod
    def from_keras(cls, model: keras.Model, params: dict[str, Any]) -> Self:
        """An already trained network (e.g. loaded from ``model.keras``)."""
        net = cls(**params)
        net.model_ = model
        net.output_dim_ = int(model.output.shape[-1])
        net.image_size_ = (int(model.input.shape[1]), int(model.input.shape[2]))
        net.history_ = {}
        return net

    def fit(
        self,
        images: np.ndarray | ImageBatches,
        targets: np.ndarray | None = None,
        *,
        on_epoch: EpochCallback | None = None,
        checkpoint: SaveCheckpoint | None = None,
        resume: StageCheckpoint | None = None,
    ) -> ImageNetwork:
        """``checkpoint(state)`` is called after every epoch; ``resume`` (a state it was
        given) carries on from there (``xmlcore.checkpoint``)."""
        self._check_params()
        keras.utils.set_random_seed(self.seed)
        data = images if isinstance(images, ImageBatches) else _check_images(images)
        y = self._targets(data, targets)
        size = self._image_size_for(data)
        train, val = self._split(len(y))
        pre = self._prepare_targets(y)
        head_in, head_out = self._build(size, y.shape[1])
        trainer = keras.Model(head_in, self._training_output(head_out), name="trainer")
        trainer.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=self._training_loss(),
            jit_compile=jit_compile(),
        )
        history = self._fit_trainer(
            trainer, data, (train, val), pre, on_epoch, (checkpoint, resume)
        )
        self.model_ = self._finish(head_in, head_out)
        self.__dict__.pop("_features", None)  # a training-graph tensor
        self.history_ = {k: [float(v) for v in vs] for k, vs in history.items()}
        self.output_dim_ = int(y.shape[1])
        self.image_size_ = size
        return self

    def _fit_trainer(
        self,
        trainer: keras.Model,
        data: Any,
        rows: tuple[np.ndarray, np.ndarray | None],
        pre: np.ndarray | SparseTargets,
        on_epoch: EpochCallback | None,
        resumable: tuple[SaveCheckpoint | None, StageCheckpoint | None],
    ) -> dict[str, list[float]]:
        """Fit (or resume) the compiled trainer; the whole history of the stage."""
        (train, val), (checkpoint, resume) = rows, resumable
        batches = self._batches(data, train, pre, shuffle=True)
        stopper = ResumableEarlyStopping(
            monitor="val_loss" if val is not None else "loss",
            patience=self.patience,
            restore_best_weights=True,
        )
        prior = None if resume is None else resume.history
        saver = EpochCheckpointer(
            "regressor", checkpoint, stopper, rng_source=batches, history=prior
        )
        validation = None if val is None else self._batches(data, val, pre, shuffle=False)
        callbacks = [stopper, saver, *self._callbacks(on_epoch)]

        def fit(initial_epoch: int) -> None:
            trainer.fit(
                batches, validation_data=validation, epochs=self.epochs, callbacks=callbacks,
                verbose=self.verbose, initial_epoch=initial_epoch,
            )  # fmt: skip

        return resumable_fit(trainer, fit, saver, resume, self.epochs)

    def predict(self, images: np.ndarray | ImageBatches, batch_size: int | None = None) -> Any:
        """``(n, d)`` float32 outputs for uint8/float ``(n, H, W, 3)`` 0..255 images."""
        model = self._fitted()
        if isinstance(images, ImageBatches):
            return np.asarray(model.predict(images, verbose=0), dtype="float32")
        pixels = _check_images(images, allow_float=True)
        if pixels.shape[1:3] != self.image_size_:
            raise ConfigError(
                "config.image_size",
                f"model takes {self.image_size_} images, got {pixels.shape[1:3]}",
            )
        step = int(batch_size or self.batch_size)
        chunks = [_predict_padded(model, pixels[i : i + step]) for i in range(0, len(pixels), step)]
        return np.concatenate(chunks)

    # -- hooks for subclasses -------------------------------------------------------

    def _prepare_targets(self, y: np.ndarray) -> np.ndarray | SparseTargets:
        """Targets as the trainer sees them (identity here)."""
        return y

    def _training_output(self, head_out: Any) -> Any:
        """What the trainer outputs (the head output here)."""
        return head_out

    def _training_loss(self) -> Any:
        return self.loss

    def _finish(self, head_in: Any, head_out: Any) -> keras.Model:
        """The public model built from the trained layers."""
        return keras.Model(head_in, head_out, name=type(self).__name__)

    # -- internals ------------------------------------------------------------------

    def _build(self, size: tuple[int, int], output_dim: int) -> tuple[Any, Any]:
        backbone = build_backbone(self.base, self.weights, (*size, 3), alpha=self.alpha)
        set_fine_tuning(backbone, self.fine_tune_layers, self.base)
        x = layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
        for i, units in enumerate(self.head_units, start=1):
            x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
            if self.dropout > 0:
                x = layers.Dropout(self.dropout, seed=self.seed, name=f"head_dropout{i}")(x)
        self._features = x  # training-only: auxiliary heads branch off here
        # float32 output whatever the policy: the regression targets and the losses need
        # more precision than bfloat16's 8 bits of mantissa (mixed precision on a GPU).
        out = layers.Dense(
            output_dim, activation=self.activation, dtype="float32", name="head_output"
        )(x)
        return backbone.input, out

    def _callbacks(self, on_epoch: EpochCallback | None) -> list[Any]:
        callbacks: list[Any] = [
            MallocGuard(),  # TensorFlow's malloc patch slows all later numpy work ~2x
        ]
        if on_epoch is not None:
            callbacks.append(
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs: on_epoch(
                        epoch, {k: float(v) for k, v in (logs or {}).items()}
                    )
                )
            )
        return callbacks

    def _targets(self, data: np.ndarray | ImageBatches, targets: Any) -> Any:
        if targets is None and isinstance(data, ImageBatches):
            targets = data.targets
        if targets is None:
            raise ConfigError("config.targets", "fit needs targets (n, d)")
        y = np.asarray(targets, dtype="float32")
        if y.ndim != 2 or y.shape[1] < 1:
            raise ConfigError("config.targets", f"targets must be 2-D (n, d), got {y.shape}")
        n = data.n_items if isinstance(data, ImageBatches) else len(data)
        if len(y) != n:
            raise ConfigError("config.shape", f"{n} images but {len(y)} target rows")
        if not np.all(np.isfinite(y)):
            raise ConfigError("config.targets", "targets contain NaN or infinity")
        return y

    def _image_size_for(self, data: np.ndarray | ImageBatches) -> tuple[int, int]:
        given = data.image_size if isinstance(data, ImageBatches) else data.shape[1:3]
        size = (int(given[0]), int(given[1]))
        if self.image_size is not None and tuple(self.image_size) != size:
            raise ConfigError(
                "config.image_size", f"image_size is {self.image_size} but images are {size}"
            )
        return size

    def _split(self, n: int) -> tuple[Any, Any]:
        """Seeded random (train_rows, val_rows); val is None when too few images."""
        n_val = round(n * self.validation_split)
        if n_val < 1 or n - n_val < 1:
            return np.arange(n), None
        order = np.random.default_rng(self.seed).permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def _batches(
        self, data: Any, rows: np.ndarray, y: np.ndarray | SparseTargets, *, shuffle: bool
    ) -> Any:
        if isinstance(data, ImageBatches):
            return data.with_targets(y).subset(
                rows, shuffle=shuffle, augment=self.augment and shuffle
            )
        return ArrayBatches(
            data[rows],
            take_rows(y, rows),
            batch_size=self.batch_size,
            shuffle=shuffle,
            augment=self.augment and shuffle,
            seed=self.seed,
        )

    def _fitted(self) -> keras.Model:
        model = getattr(self, "model_", None)
        if model is None:
            raise ModelError("model.not_fitted", f"{type(self).__name__} is not fitted yet")
        return model

    def _check_params(self) -> None:
        if self.base not in BACKBONES:
            raise ConfigError("config.base", f"unknown base {self.base!r}")
        checks = {
            "config.epochs": self.epochs >= 1,
            "config.batch_size": self.batch_size >= 1,
            "config.learning_rate": self.learning_rate > 0,
            "config.patience": self.patience >= 0,
            "config.validation_split": 0 <= self.validation_split < 1,
            "config.dropout": 0 <= self.dropout < 1,
            "config.head_units": all(u >= 1 for u in self.head_units),
            "config.fine_tune_layers": self.fine_tune_layers >= -1,
        }
        for code, ok in checks.items():
            if not ok:
                name = code.split(".", 1)[1]
                raise ConfigError(code, f"{name} = {getattr(self, name)!r} is out of range")


class LatentLabelRegressor(ImageNetwork):
    """CNN + dense head with an identity output regressing W_L with MSE (paper, step 2).

    ``target_scaling``: ``"std"`` (default; see the module docstring) or ``"none"``.
    ``label_loss`` (``"none"``: the paper's pure latent MSE; ``"mse"``;
    ``"propensity_mse"``), ``label_weight`` and ``tail_power``: the decoder-aware term of
    ``xmlcore.label_loss``; it needs ``fit(..., decoder=(d, p), labels=(n, p))``, plus
    ``decoder_bias=(p,)`` for a logistic decoder (the autoencoder's ``"bce"``).
    """

    activation = "linear"
    loss = "mse"

    def __init__(
        self,
        *args: Any,
        target_scaling: str = "std",
        label_loss: str = "none",
        label_weight: float = 1.0,
        tail_power: float = 1.0,
        aux_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.target_scaling = target_scaling
        self.label_loss = label_loss
        self.label_weight = label_weight
        self.tail_power = tail_power
        self.aux_weight = aux_weight

    def get_params(self) -> dict[str, Any]:
        extra = ("target_scaling", "label_loss", "label_weight", "tail_power", "aux_weight")
        return {**super().get_params(), **{name: getattr(self, name) for name in extra}}

    def fit(
        self,
        images: np.ndarray | ImageBatches,
        targets: np.ndarray | None = None,
        *,
        on_epoch: EpochCallback | None = None,
        decoder: np.ndarray | None = None,
        labels: Any = None,
        decoder_bias: np.ndarray | None = None,
        aux_targets: np.ndarray | None = None,
        checkpoint: SaveCheckpoint | None = None,
        resume: StageCheckpoint | None = None,
    ) -> LatentLabelRegressor:
        """As ``ImageNetwork.fit``; ``decoder``/``labels`` (and ``decoder_bias`` for a
        logistic decoder) feed the label loss (if any), ``aux_targets (n, a)`` the
        auxiliary head (used when ``aux_weight > 0``)."""
        self._decoder_inputs = (decoder, labels, decoder_bias)
        self._aux_inputs = aux_targets
        try:
            super().fit(images, targets, on_epoch=on_epoch, checkpoint=checkpoint, resume=resume)
        finally:
            for name in _TRAINING_ONLY:
                self.__dict__.pop(name, None)
        return self

    def _check_params(self) -> None:
        super()._check_params()
        if self.target_scaling not in ("std", "none"):
            raise ConfigError("config.target_scaling", "target_scaling must be 'std' or 'none'")
        if self.label_loss not in LABEL_LOSSES:
            raise ConfigError("config.label_loss", f"label_loss must be one of {LABEL_LOSSES}")
        if not (self.label_weight >= 0 and self.tail_power >= 0 and self.aux_weight >= 0):
            raise ConfigError(
                "config.label_loss", "label_weight, tail_power and aux_weight must be >= 0"
            )

    def _prepare_targets(self, y: np.ndarray) -> np.ndarray | SparseTargets:
        self.target_offset_, self.target_scale_ = _scaling(y, self.target_scaling)
        parts = [(y - self.target_offset_) / self.target_scale_]
        self._n_aux = 0
        if self.aux_weight > 0 and self._aux_inputs is not None:
            aux = _check_aux(self._aux_inputs, len(y))
            offset, scale = _scaling(aux, self.target_scaling)
            parts.append((aux - offset) / scale)
            self._n_aux = aux.shape[1]
        self._decoder, self._labels = None, np.zeros((len(y), 0), dtype="float32")
        self._decoder_bias = None
        if self.label_loss != "none":
            decoder, labels, bias = self._decoder_inputs
            self._decoder, self._labels, self._decoder_bias = check_decoder_inputs(
                decoder, labels, latent_dim=y.shape[1], n_rows=len(y), bias=bias
            )
            # the label rows stay sparse: densified per batch (issue 12)
            return SparseTargets(np.concatenate(parts, axis=1), self._labels)
        return np.concatenate(parts, axis=1)

    def _latent(self, head_out: Any, name: str) -> Any:
        affine = FixedAffine(
            self.target_scale_.tolist(), self.target_offset_.tolist(), dtype="float32", name=name
        )
        return affine(head_out)

    def _training_output(self, head_out: Any) -> Any:
        if self.label_loss == "none" and not self._n_aux:
            return head_out
        aux = None
        if self._n_aux:
            aux = layers.Dense(self._n_aux, dtype="float32", name="train_aux_output")(
                self._features
            )
        latent = self._latent(head_out, "train_latent")
        return trainer_outputs(head_out, latent, self._decoder, aux, self._decoder_bias)

    def _training_loss(self) -> Any:
        if self.label_loss == "none" and not self._n_aux:
            return self.loss
        weights = label_weights(self._labels, self.label_loss, self.tail_power)
        return label_space_loss(
            len(self.target_scale_), weights, self._labels, self.label_weight,
            aux_dim=self._n_aux, aux_weight=self.aux_weight, bias=self._decoder_bias,
        )  # fmt: skip

    def _finish(self, head_in: Any, head_out: Any) -> keras.Model:
        return keras.Model(head_in, self._latent(head_out, "latent"), name="latent_label_regressor")


_TRAINING_ONLY = (
    "_decoder_inputs", "_decoder", "_decoder_bias", "_labels", "_aux_inputs", "_n_aux",
    "_features",
)  # fmt: skip


def _scaling(y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit ``(offset, scale)``: mean and std for ``"std"``, identity for ``"none"``."""
    if kind == "none":
        return np.zeros(y.shape[1], dtype="float32"), np.ones(y.shape[1], dtype="float32")
    std = y.std(axis=0)
    # a (nearly) constant unit keeps scale 1 rather than blowing up its noise
    floor = max(1e-8, 1e-3 * float(std.max()))
    return y.mean(axis=0).astype("float32"), np.where(std > floor, std, 1.0).astype("float32")


def _check_aux(aux: Any, n_rows: int) -> np.ndarray:
    arr = np.asarray(aux, dtype="float32")
    if arr.ndim != 2 or len(arr) != n_rows or not np.isfinite(arr).all():
        raise ConfigError("config.targets", f"aux_targets must be finite ({n_rows}, a)")
    return arr


def _predict_padded(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """Predict one chunk padded to a power-of-two batch: few distinct shapes, few retraces."""
    n = len(pixels)
    size = 1 << (n - 1).bit_length()
    batch = np.zeros((size, *pixels.shape[1:]), dtype="float32")
    batch[:n] = pixels
    return np.asarray(model.predict_on_batch(batch), dtype="float32")[:n]


def _check_images(images: Any, *, allow_float: bool = False) -> Any:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise ConfigError(
            "config.images", f"images must be a non-empty (N, H, W, 3) array, got {arr.shape}"
        )
    if arr.dtype != np.uint8 and not (allow_float and np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError("config.images", f"images must be uint8 0..255, got {arr.dtype}")
    return arr
