"""The two-step model: image -> CNN -> latent label vector -> tied decoder -> label scores.

``train_two_step`` fits the deep non-negative autoencoder on the label matrix V, takes
W_L = transform(V) as the regression targets and fits a ``LatentLabelRegressor`` on
(images, W_L). ``TwoStepModel`` predicts, explains (``outputs_fn``/``keras_model``),
reads out the label hierarchy, and saves to one directory or one zip blob.

Negative latents: the regressor's identity output can dip slightly below 0, which W_L
never does. ``predict_latent`` clips at 0 before decoding, so the decoder keeps its
non-negative, part-based reading (a latent unit is either present to some degree or
absent) and a label score is never pushed down by a "negative" label set. The
differentiable ``keras_model`` applies the same clip with a ReLU.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

from xmlcore.artifacts import (
    AUTOENCODER_FILE,
    METADATA_FILE,
    MODEL_FILE,
    ModelMetadata,
    check_artifact_directory,
    load_autoencoder_state,
    save_autoencoder_state,
    unzip_artifact,
    zip_directory,
)
from xmlcore.autoencoder import DeepNonNegativeAutoencoder
from xmlcore.backbones import BACKBONES
from xmlcore.checkpoint import SaveCheckpoint, StageCheckpoint
from xmlcore.cnn import LatentLabelRegressor
from xmlcore.code_size import layer_sizes_for
from xmlcore.errors import ConfigError, ModelError, XmlcoreError
from xmlcore.explain.device_sampling import PerturbingPredictor
from xmlcore.metrics import BlockScores

if TYPE_CHECKING:
    from xmlcore.hierarchy import LabelHierarchy

__all__ = ["ModelMetadata", "TwoStepModel", "top_k_labels", "train_two_step"]


class TwoStepModel:
    """A fitted regressor + autoencoder + vocabulary; images are ``(N, H, W, 3)`` 0..255."""

    def __init__(
        self,
        regressor: LatentLabelRegressor,
        autoencoder: DeepNonNegativeAutoencoder,
        vocabulary: tuple[str, ...] | list[str],
        metadata: ModelMetadata,
    ) -> None:
        self.regressor = regressor
        self.autoencoder = autoencoder
        self.vocabulary = tuple(vocabulary)
        self.metadata = metadata
        self._keras_model: keras.Model | None = None
        self._device_predictor: PerturbingPredictor | None = None
        _check_consistent(self)

    @property
    def latent_dim(self) -> int:
        return int(self.autoencoder.H_[-1].shape[1])

    @property
    def n_labels(self) -> int:
        return len(self.vocabulary)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.regressor.image_size_

    def predict_latent(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Latent label vectors ``(N, d)`` float32, clipped at 0 (see module docstring)."""
        return np.maximum(self.regressor.predict(images, batch_size=batch_size), 0.0)

    def predict_scores(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Decoded label scores ``(N, p)`` float32, columns in ``vocabulary`` order."""
        return self.autoencoder.inverse_transform(self.predict_latent(images, batch_size))

    def score_blocks(self, images: Any, batch_size: int | None = None) -> BlockScores:
        """``predict_scores`` for ranking metrics: decoded a block of rows at a time as
        they are ranked, so the ``(N, p)`` matrix never exists (``BlockScores``)."""
        latent = self.predict_latent(images, batch_size)
        decode = self.autoencoder.inverse_transform
        return BlockScores((len(latent), len(self.vocabulary)), lambda a, b: decode(latent[a:b]))

    def predict_top_k(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` best ``(label, score)`` pairs, best first."""
        return top_k_labels(self.predict_scores(images), self.vocabulary, k)

    def outputs_fn(self, images: Any) -> np.ndarray:
        """``(N, d + p)``: latent units then label scores, from one forward pass."""
        latent = self.predict_latent(images)
        return np.concatenate([latent, self.autoencoder.inverse_transform(latent)], axis=1)

    def device_predictor(self) -> PerturbingPredictor:
        """``outputs_fn`` for perturbation explainers, perturbing on the device (cached).

        Same outputs as ``outputs_fn`` (decoded in the graph: equal to float32
        rounding); images travel as uint8 and LIME's samples as masks, which is what
        keeps a GPU busy (see ``xmlcore.explain.device_sampling``).
        """
        if self._device_predictor is None:
            self._device_predictor = PerturbingPredictor(self.keras_model())
        return self._device_predictor

    def keras_model(self) -> keras.Model:
        """Raw float32 pixels -> ``(N, d + p)`` like ``outputs_fn``, differentiable (cached)."""
        if self._keras_model is None:
            base = self.regressor.model_
            latent = layers.ReLU(name="latent_clipped")(base.output)
            ae = self.autoencoder
            logistic = ae.output_activation == "sigmoid"
            decoder = layers.Dense(
                self.n_labels,
                use_bias=logistic,
                activation=ae.output_activation,
                trainable=False,
                name="label_scores",
            )
            scores = decoder(latent)
            weights = [ae.decoder_matrix().astype("float32")]
            decoder.set_weights([*weights, ae.decoder_bias()] if logistic else weights)
            outputs = layers.Concatenate(name="latent_and_scores")([latent, scores])
            self._keras_model = keras.Model(base.input, outputs, name="two_step")
        return self._keras_model

    def hierarchy(self, top_n: int = 5) -> LabelHierarchy:
        """The paper's label hierarchy read from the autoencoder's ``H_``."""
        from xmlcore.hierarchy import LabelHierarchy

        return LabelHierarchy.from_weights(self.autoencoder.H_, self.vocabulary, top_n=top_n)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.keras``, ``autoencoder.npz``, ``metadata.json`` into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.regressor.model_.save(path / MODEL_FILE)
        save_autoencoder_state(path / AUTOENCODER_FILE, self.autoencoder.get_state())
        (path / METADATA_FILE).write_text(self.metadata.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TwoStepModel:
        """Read a directory written by ``save``; ``model.corrupt_artifact`` when broken."""
        path = Path(directory)
        check_artifact_directory(path)
        metadata = ModelMetadata.from_json((path / METADATA_FILE).read_text(encoding="utf-8"))
        try:
            autoencoder = DeepNonNegativeAutoencoder.from_state(
                load_autoencoder_state(path / AUTOENCODER_FILE)
            )
            network = keras.saving.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
            regressor = LatentLabelRegressor.from_keras(network, metadata.regressor_params)
            return cls(regressor, autoencoder, metadata.vocabulary, metadata)
        except ModelError as exc:
            raise ModelError("model.corrupt_artifact", exc.message) from exc
        except (XmlcoreError, OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelError("model.corrupt_artifact", f"cannot load the model: {exc}") from exc

    def to_bytes(self) -> bytes:
        """The saved directory as one zip blob (for object storage)."""
        with tempfile.TemporaryDirectory() as tmp:
            return zip_directory(self.save(tmp))

    @classmethod
    def from_bytes(cls, data: bytes) -> TwoStepModel:
        with tempfile.TemporaryDirectory() as tmp:
            unzip_artifact(data, Path(tmp))
            return cls.load(tmp)


def top_k_labels(
    scores: np.ndarray, vocabulary: tuple[str, ...], k: int
) -> list[list[tuple[str, float]]]:
    """Rank each row of ``scores (N, p)``: the ``k`` best ``(label, score)``, best first."""
    if not 1 <= k <= len(vocabulary):
        raise ConfigError("config.k", f"k must be in 1..{len(vocabulary)}, got {k}")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [(vocabulary[j], float(row[j])) for j in idx]
        for row, idx in zip(scores, order, strict=True)
    ]


def _check_consistent(model: TwoStepModel) -> None:
    H = getattr(model.autoencoder, "H_", None)
    net = getattr(model.regressor, "model_", None)
    if H is None or net is None:
        raise ModelError(
            "model.not_fitted", "TwoStepModel needs a fitted regressor and autoencoder"
        )
    problems = []
    if H[0].shape[0] != len(model.vocabulary):
        problems.append(f"vocabulary has {len(model.vocabulary)} labels, H_1 {H[0].shape[0]}")
    if int(net.output.shape[-1]) != H[-1].shape[1]:
        problems.append(f"regressor outputs {net.output.shape[-1]}, latent is {H[-1].shape[1]}")
    if problems:
        raise ModelError("model.inconsistent", "; ".join(problems))


EpochCallback = Callable[[str, int, dict[str, float]], None]

# the decoder-aware label loss (xmlcore.label_loss). The auxiliary lower-code head
# (aux_weight > 0) is off: over 10 paired runs it changed P@5 by +0.002 on average
# (docs/BENCHMARKS.md), within the seed noise.
DEFAULT_REGRESSOR_PARAMS: dict[str, Any] = {"label_loss": "mse"}


def train_two_step(
    images: Any,
    label_space: Any,
    *,
    layer_sizes: tuple[int, ...] | None = None,
    ae_loss: str = "mse",
    ae_params: dict[str, Any] | None = None,
    base: str = "small",
    weights: str = "none",
    image_size: tuple[int, int] | None = None,
    fine_tune_layers: int = 2,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    regressor_params: dict[str, Any] | None = None,
    model_id: str | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint: SaveCheckpoint | None = None,
    resume: StageCheckpoint | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TwoStepModel:
    """Fit the autoencoder on ``label_space.matrix`` then the CNN on (images, W_L).

    ``images``: uint8 ``(n, H, W, 3)`` in ``label_space.image_keys`` order, or an
    ``ImageBatches`` over them (its targets are replaced by W_L). Without
    ``layer_sizes`` they are chosen on the labels by ``xmlcore.code_size`` (the
    narrowest code whose decoder ceiling is within tolerance of the best); the choice
    and every candidate's ceiling land in ``metadata.metrics`` (``decoder_ceiling*``).
    ``ae_params`` go to ``DeepNonNegativeAutoencoder`` (epochs, learning_rate, ...),
    ``regressor_params`` to ``LatentLabelRegressor`` (head_units, patience, augment, ...).
    ``on_epoch(stage, epoch, logs)`` reports progress, stage ``"autoencoder"`` or
    ``"regressor"``; ``on_stage(stage)`` is called as each stage begins (the first epoch
    of a big CNN can take minutes). Both stages' history lands in ``metadata.history``.
    ``checkpoint(state)`` gets each stage's state after every epoch; ``resume`` (the
    last state it got) carries on from there (``xmlcore.checkpoint``).
    """
    layer_sizes, sizing = _layer_sizes(label_space.matrix, layer_sizes, ae_loss, ae_params,
                                       seed, resume)  # fmt: skip
    if on_stage is not None:
        on_stage("autoencoder")
    autoencoder = _fit_autoencoder(
        label_space.matrix, DeepNonNegativeAutoencoder(
            layer_sizes=layer_sizes, loss=ae_loss, seed=seed, **(ae_params or {})
        ), on_epoch, checkpoint, resume,
    )  # fmt: skip
    codes = autoencoder.codes(label_space.matrix)
    latent = codes[-1]
    regressor = LatentLabelRegressor(
        base=base,
        weights=weights,
        image_size=image_size,
        fine_tune_layers=fine_tune_layers,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        **{**DEFAULT_REGRESSOR_PARAMS, **(regressor_params or {})},
    )
    stage_cb = None if on_epoch is None else (lambda e, logs: on_epoch("regressor", e, logs))
    decoder = {
        "decoder": autoencoder.decoder_matrix(),
        "decoder_bias": getattr(autoencoder, "label_bias_", None),
        "labels": label_space.matrix,
        # the lower layers' codes: an auxiliary target when regressor aux_weight > 0
        "aux_targets": np.concatenate(codes[:-1], axis=1) if len(codes) > 1 else None,
    }
    resumable: dict[str, Any] = {
        "resume": resume if resume is not None and resume.stage == "regressor" else None,
        "checkpoint": None if checkpoint is None else _with_autoencoder(checkpoint, autoencoder),
    }
    if on_stage is not None:
        on_stage("regressor")
    if hasattr(images, "with_targets"):
        regressor.fit(images.with_targets(latent), on_epoch=stage_cb, **decoder, **resumable)
    else:
        regressor.fit(images, latent, on_epoch=stage_cb, **decoder, **resumable)
    metadata = _training_metadata(regressor, autoencoder, label_space, model_id)
    metadata.metrics.update(sizing)
    return TwoStepModel(regressor, autoencoder, label_space.vocabulary, metadata)


def _layer_sizes(
    V: Any,
    given: tuple[int, ...] | None,
    ae_loss: str,
    ae_params: dict[str, Any] | None,
    seed: int,
    resume: StageCheckpoint | None,
) -> tuple[tuple[int, ...], dict[str, float]]:
    """The given sizes; else the checkpoint's (a resumed training keeps the code it
    started with, even where a rerun of the choice could flip on another machine); else
    chosen on the labels (``xmlcore.code_size``), with the table as metrics."""
    if given is not None:
        return tuple(given), {"code_size_chosen": 0.0}
    if resume is not None:
        if resume.stage == "regressor" and resume.autoencoder is not None:
            sizes = resume.autoencoder["config"]["layer_sizes"]
        else:  # the autoencoder's own weights: H_1 (p, k_1), H_2 (k_1, k_2), ...
            sizes = [w.shape[1] for w in resume.weights if np.ndim(w) == 2]
        return tuple(int(k) for k in sizes), {"code_size_chosen": 1.0, "code_size_resumed": 1.0}
    # the candidates train briefly: the user's epochs / patience are for the final fit
    brief = {k: v for k, v in (ae_params or {}).items() if k not in ("epochs", "patience")}
    return layer_sizes_for(V, ae_params={"loss": ae_loss, **brief}, seed=seed)


def _fit_autoencoder(
    V: Any,
    autoencoder: DeepNonNegativeAutoencoder,
    on_epoch: EpochCallback | None,
    checkpoint: SaveCheckpoint | None,
    resume: StageCheckpoint | None,
) -> DeepNonNegativeAutoencoder:
    """Fit (or resume) the first stage; a regressor checkpoint carries it fitted."""
    if resume is not None and resume.stage == "regressor" and resume.autoencoder is not None:
        return DeepNonNegativeAutoencoder.from_state(resume.autoencoder)
    return autoencoder.fit(
        V,
        callbacks=_stage_callbacks("autoencoder", on_epoch),
        checkpoint=checkpoint,
        resume=resume if resume is not None and resume.stage == "autoencoder" else None,
    )


def _with_autoencoder(
    save: SaveCheckpoint, autoencoder: DeepNonNegativeAutoencoder
) -> SaveCheckpoint:
    state = autoencoder.get_state()
    return lambda checkpoint: save(dataclasses.replace(checkpoint, autoencoder=state))


def _stage_callbacks(stage: str, on_epoch: EpochCallback | None) -> list[Any]:
    if on_epoch is None:
        return []
    return [
        keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(
                stage, epoch, {k: float(v) for k, v in (logs or {}).items()}
            )
        )
    ]


def _training_metadata(
    regressor: LatentLabelRegressor,
    autoencoder: DeepNonNegativeAutoencoder,
    label_space: Any,
    model_id: str | None,
) -> ModelMetadata:
    history = {"autoencoder": autoencoder.history_, "regressor": regressor.history_}
    metrics = {
        "autoencoder_reconstruction_mse": autoencoder.reconstruction_error(label_space.matrix),
        "regressor_epochs": float(len(regressor.history_.get("loss", []))),
    }
    for key in ("loss", "val_loss"):
        if regressor.history_.get(key):
            metrics[f"regressor_best_{key}"] = min(regressor.history_[key])
    return ModelMetadata(
        vocabulary=list(label_space.vocabulary),
        layer_sizes=[int(k) for k in autoencoder.layer_sizes],
        latent_dim=int(autoencoder.H_[-1].shape[1]),
        image_size=list(regressor.image_size_),
        base=regressor.base,
        weights=str(regressor.weights),
        preprocessing=BACKBONES[regressor.base].preprocessing,
        autoencoder_loss=autoencoder.loss,
        model_id=model_id,
        metrics=metrics,
        history=history,
        regressor_params=regressor.get_params(),
    )
