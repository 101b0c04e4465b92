"""How the client shows a job while it waits: a rich progress bar on a terminal, one
line per change elsewhere (a CI log, a pipe), and a training's stage, epoch, losses
and ETA in words.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from xmlx.client import JobStatus


def describe_training(training: Mapping[str, Any] | None) -> str:
    """E.g. `cnn epoch 7/30 loss 0.1234 val 0.1502 ETA 42 s`; empty for None."""
    if not training:
        return ""
    parts = [str(training.get("stage", ""))]
    if training.get("epoch") is not None:
        total = training.get("epochs")
        parts.append(f"epoch {training['epoch']}" + (f"/{total}" if total else ""))
    for key, name in (("loss", "loss"), ("val_loss", "val")):
        if training.get(key) is not None:
            parts.append(f"{name} {training[key]:.4g}")
    if training.get("eta_seconds") is not None:
        parts.append(f"ETA {format_duration(float(training['eta_seconds']))}")
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class ProgressDisplay:
    """Items done of total; for a training that runs, the stage's epochs instead."""

    def __init__(self, job_id: str, out: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.job_id = job_id
        self.console = Console(file=out or sys.stdout)
        self.last_line = ""
        # Off a terminal a live bar draws nothing until the end: print lines instead.
        self.progress = None
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=self.console,
            )  # fmt: skip
            self.task = self.progress.add_task(f"job {job_id}", total=None, state="queued")
            self.progress.start()

    def update(self, status: JobStatus) -> None:
        total, completed = status.total or None, status.done + status.failed
        training = status.training or {}
        if not status.finished and training.get("epochs") and training.get("epoch"):
            total, completed = int(training["epochs"]), int(training["epoch"])
        state = f"{status.state} {status.training_line()}".strip()
        if self.progress is not None:
            self.progress.update(self.task, total=total, completed=completed, state=state)
            return
        line = f"job {self.job_id}: {state} ({completed}/{total or '?'})"
        if line != self.last_line:
            self.console.print(line, highlight=False, soft_wrap=True)
            self.last_line = line

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def describe_faithfulness(scores: Mapping[str, Any] | None) -> str | None:
    """AUCs (an item's or a job's means) in words, e.g. `deletion AUC 0.214 (lower is
    better) · insertion AUC 0.640 (higher is better)`; None when there are none."""
    parts = []
    for name, kind, better in (("deletion_auc", "deletion", "lower"),
                               ("insertion_auc", "insertion", "higher")):  # fmt: skip
        if name in (scores or {}):
            value = (scores or {})[name]
            shown = "undefined" if value is None else f"{value:.3f}"
            parts.append(f"{kind} AUC {shown} ({better} is better)")
    return " · ".join(parts) or None
