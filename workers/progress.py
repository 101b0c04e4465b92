"""Reporting a training's progress while it runs: stage, epoch / epochs, losses, ETA.

The training's per-epoch callback hands every epoch to `TrainingProgress.epoch`; the
reporter times the epochs, keeps those not yet written, and writes them with the stage's
ETA at most once per `min_interval` seconds, plus at once on every change of stage (so
a stage's last epochs are never held back). The write is owner-checked in the kernel
(`xmlx.jobs.record_training_progress`): a worker that lost its lease writes nothing.
A database blip must not cost a training its hours of work: the epochs stay buffered
and the next write carries them.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from statistics import fmean
from typing import Any

from sqlalchemy.exc import OperationalError

from xmlx import jobs
from xmlx.db import SessionFactory
from xmlx.models import Job

log = logging.getLogger("xmlx.worker")
MIN_INTERVAL_SECONDS = 1.0
# xmlcore names the image model's stage "regressor"; the service calls it "cnn".
STAGE_NAMES = {"autoencoder": "autoencoder", "regressor": "cnn", "cnn": "cnn"}
ETA_WINDOW = 5  # the ETA follows the recent epochs, not the slow first (compiling) one


class TrainingProgress:
    """The progress reporter of one training attempt (`lease` is its chunk's lease)."""

    def __init__(
        self,
        sessions: SessionFactory,
        job_id: str,
        lease: jobs.LeaseRef,
        *,
        epochs: Mapping[str, int],
        min_interval: float = MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions, self.job_id, self.lease = sessions, job_id, lease
        self.epochs = {STAGE_NAMES.get(stage, stage): n for stage, n in epochs.items()}
        self.min_interval, self.clock = min_interval, clock
        self.current = "loading"
        self.pending: list[jobs.EpochRecord] = []
        self.durations: list[float] = []
        self.mark = clock()
        self.last_epoch = 0
        self.written_at: float | None = None
        self.lease_lost = False

    def stage(self, stage: str) -> None:
        """The training enters `stage` (loading, autoencoder, regressor/cnn, evaluating)."""
        self.mark = self.clock()
        self._enter(STAGE_NAMES.get(stage, stage))

    def epoch(self, stage: str, epoch: int, logs: Mapping[str, float]) -> None:
        """Keras' `on_epoch_end` of `stage`: `epoch` counts from 0."""
        stage = STAGE_NAMES.get(stage, stage)
        if stage != self.current:  # no stage() call came: time the epoch from the last event
            self._enter(stage)
        now = self.clock()
        self.durations.append(now - self.mark)
        self.mark = now
        record = jobs.EpochRecord(
            stage, epoch + 1, _number(logs.get("loss")), _number(logs.get("val_loss")),
            self.durations[-1],
        )  # fmt: skip
        self.pending.append(record)
        self.last_epoch = record.epoch
        if self.written_at is None or now - self.written_at >= self.min_interval:
            self._write()

    def eta_seconds(self) -> float | None:
        """Time left in the current stage: the epochs left at the recent epoch time
        (an upper bound: early stopping may end the stage sooner)."""
        total = self.epochs.get(self.current)
        if total is None or not self.durations:
            return None
        recent = (self.durations[1:] or self.durations)[-ETA_WINDOW:]
        return max(total - self.last_epoch, 0) * fmean(recent)

    def _enter(self, stage: str) -> None:
        self.current = stage
        self.durations = []
        self.last_epoch = 0
        self._write()

    def _write(self) -> None:
        if self.lease_lost:
            return
        update = jobs.ProgressUpdate(
            self.current, self.epochs.get(self.current), self.eta_seconds(), tuple(self.pending)
        )
        try:
            held = jobs.record_training_progress(
                self.sessions, self.job_id, update, lease=self.lease
            )
        except OperationalError:
            log.warning("training progress not written (database unavailable); kept for later")
            return
        self.lease_lost = not held
        self.written_at = self.clock()
        self.pending = []


def _number(value: Any) -> float | None:
    """A loss as JSON can hold it: NaN and infinities (a diverging run) become null."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def start_progress(sessions: SessionFactory, job: Job, lease: jobs.LeaseRef) -> TrainingProgress:
    """The reporter of training job `job`, its stage now `loading` (written at once)."""
    progress = TrainingProgress(
        sessions, job.id, lease, epochs=stage_epochs(job.params.get("training") or {})
    )
    progress.stage("loading")
    return progress


def stage_epochs(training: Mapping[str, Any]) -> dict[str, int]:
    """The most epochs of each stage of a training with these job `training` params
    (`epochs`, `ae_params.epochs`): the values given, else the defaults of
    `xmlcore.model.train_two_step` and the autoencoder it fits."""
    from xmlcore.autoencoder import DeepNonNegativeAutoencoder
    from xmlcore.model import train_two_step

    ae = inspect.signature(DeepNonNegativeAutoencoder).parameters["epochs"].default
    cnn = inspect.signature(train_two_step).parameters["epochs"].default
    ae_params = training.get("ae_params") or {}
    return {
        "autoencoder": int(ae_params.get("epochs", ae)),
        "cnn": int(training.get("epochs") or cnn),
    }
