"""Training state after every epoch, and resuming a stage from it.

The pattern of Keras' ``BackupAndRestore``, extended to what a resumed fit needs to
carry on as if it had not stopped: the model's weights, the optimizer's variables
(Adam's moments and step count), the epoch, the early-stopping state (wait, best, best
weights), the history so far, and the data order's random state. One
``StageCheckpoint`` per stage (``"autoencoder"``, then ``"regressor"``); a regressor
checkpoint also carries the fitted autoencoder, so a resumed training skips that stage.

Pure: ``to_bytes``/``from_bytes`` (an npz of arrays plus one JSON header, no pickle)
and a ``save`` callable given by the caller; where the bytes go (an object store,
written atomically) is the service's business.

Not restored: the dropout layers' seed generators restart from the layer's seed, and
the autoencoder's in-graph shuffle from the global seed; a resumed run therefore
matches an uninterrupted one within seed noise, not bit for bit.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from xmlcore.errors import ModelError

STAGES = ("autoencoder", "regressor")


@dataclass
class StageCheckpoint:
    """The state of one stage after ``epoch`` epochs (``done``: the stage has ended)."""

    stage: str
    epoch: int
    done: bool
    weights: list[np.ndarray]
    optimizer: list[np.ndarray] = field(default_factory=list)
    best_weights: list[np.ndarray] | None = None
    early_stopping: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    autoencoder: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        header: dict[str, Any] = {
            "stage": self.stage, "epoch": self.epoch, "done": self.done,
            "early_stopping": self.early_stopping, "history": self.history, "rng": self.rng,
            "has_best": self.best_weights is not None,
        }  # fmt: skip
        arrays: dict[str, Any] = {}
        groups = {"w": self.weights, "o": self.optimizer, "b": self.best_weights or []}
        if self.autoencoder is not None:
            state = self.autoencoder
            header["autoencoder"] = {k: v for k, v in state.items() if k not in _AE_ARRAYS}
            groups["h"] = list(state["weights"])
            if state.get("label_bias") is not None:
                arrays["ae_bias"] = np.asarray(state["label_bias"])
        for prefix, values in groups.items():
            header[f"n_{prefix}"] = len(values)
            arrays.update({f"{prefix}_{i}": np.asarray(v) for i, v in enumerate(values)})
        arrays["header"] = np.array(json.dumps(header))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StageCheckpoint:
        """Inverse of ``to_bytes``; ``checkpoint.corrupt`` when it cannot be read."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))

                def group(prefix: str) -> list[np.ndarray]:
                    return [npz[f"{prefix}_{i}"] for i in range(int(header.get(f"n_{prefix}", 0)))]

                autoencoder = None
                if "autoencoder" in header:
                    bias = npz["ae_bias"] if "ae_bias" in npz.files else None
                    autoencoder = {
                        **header["autoencoder"],
                        "weights": group("h"),
                        "label_bias": bias,
                    }
                return cls(
                    stage=str(header["stage"]), epoch=int(header["epoch"]),
                    done=bool(header["done"]), weights=group("w"), optimizer=group("o"),
                    best_weights=group("b") if header["has_best"] else None,
                    early_stopping=dict(header["early_stopping"]), history=header["history"],
                    rng=dict(header["rng"]), autoencoder=autoencoder,
                )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError("checkpoint.corrupt", f"cannot read the checkpoint: {exc}") from exc


_AE_ARRAYS = ("weights", "label_bias")
SaveCheckpoint = Callable[[StageCheckpoint], None]
_STOPPER_KEYS = ("wait", "best", "best_epoch", "stopped_epoch")


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` whose state survives a restart: ``resume_from`` sets it back
    after Keras resets it at the start of ``fit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume: StageCheckpoint | None = None

    def resume_from(self, checkpoint: StageCheckpoint) -> None:
        self._resume = checkpoint

    def state(self) -> dict[str, Any]:
        return {key: _plain(getattr(self, key, None)) for key in _STOPPER_KEYS}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._resume is not None:
            for key, value in self._resume.early_stopping.items():
                setattr(self, key, value)
            best = self._resume.best_weights
            self.best_weights = None if best is None else [np.array(w) for w in best]


class EpochCheckpointer(keras.callbacks.Callback):
    """After every epoch, hands ``save`` the stage's state (``save`` None: only keeps
    the history). Put it AFTER the early stopping callback in the list, so the state it
    saves includes this epoch's verdict.

    ``rng_source``: the training batches (``get_rng_state``/``set_rng_state``), or None.
    ``history``: the epochs of this stage trained before a restart (kept in order).
    """

    def __init__(
        self,
        stage: str,
        save: SaveCheckpoint | None,
        stopper: ResumableEarlyStopping,
        *,
        rng_source: Any = None,
        history: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.stage, self.save, self.stopper = stage, save, stopper
        self.rng_source = rng_source
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.save is None:
            return
        model = self.model
        best = self.stopper.best_weights
        self.save(
            StageCheckpoint(
                stage=self.stage,
                epoch=epoch + 1,
                done=bool(model.stop_training),
                weights=[np.array(w) for w in model.get_weights()],
                optimizer=[np.array(v) for v in model.optimizer.variables],
                best_weights=None if best is None else [np.array(w) for w in best],
                early_stopping=self.stopper.state(),
                history={k: list(v) for k, v in self.history.items()},
                rng=self.rng_source.get_rng_state() if self.rng_source is not None else {},
            )
        )


def resumable_fit(
    model: keras.Model,
    fit: Callable[[int], Any],
    checkpointer: EpochCheckpointer,
    resume: StageCheckpoint | None,
    epochs: int,
) -> dict[str, list[float]]:
    """Run ``fit(initial_epoch=..)`` from ``resume`` (None: from the start), or skip it
    when the checkpoint's stage had ended; the stage's whole history."""
    if resume is not None:
        restore_model(model, resume)
        checkpointer.stopper.resume_from(resume)
        if checkpointer.rng_source is not None and resume.rng:
            checkpointer.rng_source.set_rng_state(resume.rng)
        if resume.done or resume.epoch >= epochs:
            model.set_weights(final_weights(resume))
            return checkpointer.history
    fit(0 if resume is None else resume.epoch)
    return checkpointer.history


def restore_model(model: keras.Model, checkpoint: StageCheckpoint) -> None:
    """Weights and optimizer state of a compiled ``model`` from ``checkpoint``."""
    model.set_weights(checkpoint.weights)
    if checkpoint.optimizer:
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        if len(optimizer.variables) != len(checkpoint.optimizer):
            raise ModelError("checkpoint.mismatch", "the optimizer state does not fit the model")
        for variable, value in zip(optimizer.variables, checkpoint.optimizer, strict=True):
            variable.assign(value)


def final_weights(checkpoint: StageCheckpoint) -> list[np.ndarray]:
    """The weights a finished stage ends with: the best epoch's, as early stopping
    restores them at the end of a fit."""
    return checkpoint.best_weights if checkpoint.best_weights is not None else checkpoint.weights


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
