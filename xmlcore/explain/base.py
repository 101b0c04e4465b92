"""The explainer interface every method implements (after Captum's attribution API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from xmlcore.errors import ExplainError
from xmlcore.explain.result import Explanation, TargetInfo

PredictFn = Callable[[np.ndarray], np.ndarray]
"""``images (N, H, W, 3) uint8 -> outputs (N, m) float``."""

TargetSpec = int | TargetInfo
Targets = Sequence[TargetSpec] | Sequence[Sequence[TargetSpec]]


class Explainer(ABC):
    """Attributes outputs of a model to the pixels of its input images.

    ``explain(images, targets)`` takes a uint8 batch ``(N, H, W, 3)`` and either one
    list of targets for every image or one list per image; it returns, per image, one
    ``Explanation`` per target, in the order given.
    """

    method: str = "explainer"

    @abstractmethod
    def explain(self, images: np.ndarray, targets: Targets) -> list[list[Explanation]]:
        raise NotImplementedError


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a batch: 4-D, three channels, non-empty; returns it as uint8."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ExplainError(
            "explain.bad_images", f"expected images of shape (N, H, W, 3), got {arr.shape}"
        )
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise ExplainError("explain.bad_images", f"images are too small: {arr.shape[1:3]}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and (arr.min() < 0 or arr.max() > 255):
            raise ExplainError("explain.bad_images", "float images must lie in 0..255")
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def normalize_targets(targets: Targets, n_images: int, n_outputs: int) -> list[list[TargetInfo]]:
    """Turn ``targets`` into one list of ``TargetInfo`` per image, checking columns."""
    if isinstance(targets, int | TargetInfo):
        targets = [targets]
    items = list(targets)
    if not items:
        raise ExplainError("explain.no_targets", "at least one target is required")
    per_image = isinstance(items[0], Sequence) and not isinstance(items[0], str)
    if per_image:
        if len(items) != n_images:
            raise ExplainError(
                "explain.bad_targets",
                f"got target lists for {len(items)} images, but {n_images} images",
            )
        rows = [list(row) if isinstance(row, Sequence) else [row] for row in items]
    else:
        flat: list[TargetSpec] = [t for t in items if not isinstance(t, Sequence)]
        rows = [list(flat) for _ in range(n_images)]
    return [[_as_target(t, n_outputs) for t in row] for row in rows]


def _as_target(spec: object, n_outputs: int) -> TargetInfo:
    info = spec if isinstance(spec, TargetInfo) else None
    if info is None:
        if isinstance(spec, bool) or not isinstance(spec, int | np.integer):
            raise ExplainError("explain.bad_targets", f"a target must be an int, got {spec!r}")
        info = TargetInfo(column=int(spec))
    if not 0 <= info.column < n_outputs:
        raise ExplainError(
            "explain.unknown_target",
            f"target column {info.column} is outside the model's {n_outputs} outputs",
        )
    return info
