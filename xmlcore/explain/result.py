"""The result of explaining one target of one image, shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TargetInfo:
    """One output of the explained function.

    ``column`` indexes the output of the predict function (for a two-step model:
    latent units first, then decoded labels). ``kind`` is ``"latent"``, ``"label"`` or
    ``"output"`` (a bare column); ``index`` is the position within that kind; ``name``
    is what people read; ``hierarchy_path`` is the JSON form of the latent unit's path
    down to label sets, when there is one.
    """

    column: int
    kind: str = "output"
    index: int = -1
    name: str = ""
    hierarchy_path: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            object.__setattr__(self, "index", self.column)
        if not self.name:
            object.__setattr__(self, "name", f"{self.kind} {self.index}")

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "index": self.index,
            "name": self.name,
            "hierarchy_path": self.hierarchy_path,
        }


@dataclass
class Explanation:
    """Attribution of one target on one image.

    ``heatmap`` is float32 ``(H, W)``: positive pixels push the target up, negative
    down. Superpixel methods (LIME, occlusion over segments) also fill ``segments``
    (int32 ``(H, W)``, ids 0..K-1), ``segment_weights`` ``(K,)``, ``intercept``,
    ``score`` (weighted R^2 of the surrogate) and ``local_prediction`` (surrogate at the
    all-ones row). ``prediction`` is the model's output for the unperturbed image.
    ``provenance`` records method, parameters, seed, segment hash, model id, versions.
    ``metrics`` are scores of the explanation itself, each in a JSON-ready float, e.g.
    LIME's ``"stability@5"`` (``xmlcore.explain.stability``).
    """

    image_index: int
    target: TargetInfo
    method: str
    heatmap: np.ndarray
    prediction: float | None = None
    segments: np.ndarray | None = None
    segment_weights: np.ndarray | None = None
    intercept: float | None = None
    score: float | None = None
    local_prediction: float | None = None
    top_segments: list[int] = field(default_factory=list)
    num_samples: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict; arrays only when ``include_arrays`` (they are big)."""
        out: dict[str, Any] = {
            "image_index": self.image_index,
            "target": self.target.to_json(),
            "method": self.method,
            "prediction": _maybe_float(self.prediction),
            "intercept": _maybe_float(self.intercept),
            "score": _maybe_float(self.score),
            "local_prediction": _maybe_float(self.local_prediction),
            "top_segments": [int(s) for s in self.top_segments],
            "num_samples": self.num_samples,
            "provenance": self.provenance,
            "metrics": {name: round(float(v), 6) for name, v in self.metrics.items()},
            "heatmap_shape": list(self.heatmap.shape),
        }
        if self.segment_weights is not None:
            out["segment_weights"] = [float(w) for w in self.segment_weights]
        if include_arrays:
            out["heatmap"] = self.heatmap.astype(float).tolist()
            if self.segments is not None:
                out["segments"] = self.segments.astype(int).tolist()
        return out


def _maybe_float(value: float | None) -> float | None:
    return None if value is None else float(value)
