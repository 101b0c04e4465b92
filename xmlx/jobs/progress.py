"""A training job's live progress: stage, epoch / epochs, last losses, ETA, curves.

Stored as one JSON value in `jobs.training_progress`:

    {"stage": "cnn", "epoch": 7, "epochs": 30, "loss": 0.12, "val_loss": 0.15,
     "eta_seconds": 41.5, "updated_at": "2025-06-12T10:00:00+00:00",
     "history": {"autoencoder": {"epoch": [1, 2], "loss": [..], "val_loss": [..],
                                 "seconds": [..]},
                 "cnn": {...}}}

The history is keyed by stage and epoch, not by arrival: an epoch record replaces
the stage's entries from that epoch on and drops the later stages. A training resumed
from its checkpoint at epoch k therefore appends k+1, k+2, ... to the curve it had; one
restarted from scratch replaces the curve from epoch 1 (the epochs a dead worker trained
after its last checkpoint are not part of the model, so they leave the curve too).

Only the chunk's lease holder writes (like every other result), in one transaction
under the job's lock. The worker batches its epochs and writes at most about once a
second (`workers.progress`), so a fast stage costs a handful of writes, not one per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from xmlx.db import SessionFactory, session_scope, utcnow
from xmlx.jobs.types import JobError, LeaseRef
from xmlx.repository import dispatch, work

# In the order a training goes through them.
STAGES = ("loading", "autoencoder", "cnn", "evaluating")
EPOCH_STAGES = ("autoencoder", "cnn")
HISTORY_SERIES = ("epoch", "loss", "val_loss", "seconds")


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch (1-based) of an epoch stage; `seconds` it took."""

    stage: str
    epoch: int
    loss: float | None
    val_loss: float | None
    seconds: float


@dataclass(frozen=True)
class ProgressUpdate:
    """What the worker reports: the stage it is in, its epoch count, the ETA of the
    stage, and the epochs finished since its last report (oldest first)."""

    stage: str
    epochs: int | None = None
    eta_seconds: float | None = None
    records: Sequence[EpochRecord] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown training stage {self.stage!r}")
        if any(r.stage not in EPOCH_STAGES or r.epoch < 1 for r in self.records):
            raise ValueError("epoch records belong to autoencoder or cnn, from epoch 1")


def merge_progress(
    current: dict[str, Any] | None, update: ProgressUpdate, now: datetime
) -> dict[str, Any]:
    """The stored progress after `update` (a new value; `current` is not changed)."""
    history = {
        stage: {name: list(values) for name, values in series.items()}
        for stage, series in ((current or {}).get("history") or {}).items()
    }
    for record in update.records:
        _put_epoch(history, record)
    # The epoch and losses shown are the current stage's (a stage change also carries
    # the previous stage's last epochs).
    last = next((r for r in reversed(update.records) if r.stage == update.stage), None)
    previous = current or {}
    same_stage = previous.get("stage") == update.stage
    return {
        "stage": update.stage,
        "epoch": last.epoch if last else (previous.get("epoch") if same_stage else None),
        "epochs": update.epochs,
        "loss": last.loss if last else (previous.get("loss") if same_stage else None),
        "val_loss": last.val_loss if last else (previous.get("val_loss") if same_stage else None),
        "eta_seconds": None if update.eta_seconds is None else round(update.eta_seconds, 1),
        "updated_at": now.isoformat(),
        "history": history,
    }


def _put_epoch(history: dict[str, dict[str, list[Any]]], record: EpochRecord) -> None:
    for later in EPOCH_STAGES[EPOCH_STAGES.index(record.stage) + 1 :]:
        history.pop(later, None)
    series = history.setdefault(record.stage, {name: [] for name in HISTORY_SERIES})
    epochs = series.get("epoch", [])
    keep = next((i for i, epoch in enumerate(epochs) if epoch >= record.epoch), len(epochs))
    values = (record.epoch, record.loss, record.val_loss, round(record.seconds, 3))
    for name, value in zip(HISTORY_SERIES, values, strict=True):
        series[name] = [*series.get(name, [])[:keep], value]


def record_training_progress(
    sessions: SessionFactory,
    job_id: str,
    update: ProgressUpdate,
    *,
    lease: LeaseRef,
    now: datetime | None = None,
) -> bool:
    """Merge `update` into the job's progress if `lease` still holds (one transaction).
    False: the lease is another worker's now, and nothing was written."""
    now = now or utcnow()
    with session_scope(sessions) as session:
        job = work.lock_job(session, job_id, now)
        if job is None:
            raise JobError("job.not_found", f"no job {job_id}")
        if not dispatch.holds_lease(session, lease.chunk_id, lease.owner):
            return False
        job.training_progress = merge_progress(job.training_progress, update, now)
        return True
