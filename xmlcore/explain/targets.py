"""What to explain, in the words of a two-step model: latent units and labels.

A two-step model's ``outputs_fn(images)`` returns ``(N, d + p)``: the ``d`` latent units
first, then the ``p`` decoded label scores. ``resolve_targets`` turns people's targets
(``LatentUnit(3)``, ``LabelTarget("garlic")``, ``TopKLabels(5)``) into ``TargetInfo``
columns of that output, so one explainer pass answers all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.result import TargetInfo


@dataclass(frozen=True)
class LatentUnit:
    """Latent unit ``index`` (0-based) of the top layer; carries its hierarchy path."""

    index: int


@dataclass(frozen=True)
class LabelTarget:
    """The decoded score of label ``name`` (a vocabulary entry)."""

    name: str


@dataclass(frozen=True)
class TopKLabels:
    """The ``k`` labels the model scores highest on each image (may differ per image)."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("config.top_k", f"TopKLabels needs k >= 1, got {self.k}")


TargetLike = LatentUnit | LabelTarget | TopKLabels | TargetInfo | str | int
"""A ``str`` is a label name, an ``int`` a bare output column."""


class TwoStepLike(Protocol):
    """What ``resolve_targets`` needs of a model (``xmlcore.model.TwoStepModel`` has it)."""

    @property
    def vocabulary(self) -> Sequence[str]: ...

    @property
    def latent_dim(self) -> int: ...

    def hierarchy(self) -> Any: ...

    def predict_scores(self, images: np.ndarray) -> np.ndarray: ...


def resolve_targets(
    model: TwoStepLike,
    images: np.ndarray,
    targets: TargetLike | Sequence[TargetLike] | Sequence[Sequence[TargetLike]],
) -> list[list[TargetInfo]]:
    """One list of ``TargetInfo`` per image, columns in ``outputs_fn`` order.

    ``targets`` is one target, one list for every image, or one list per image.
    ``TopKLabels`` calls ``model.predict_scores(images)`` once. A column asked twice
    for the same image (``LabelTarget("x")`` and a top-k that contains ``x``) is kept
    once, at its first place. Unknown names and out-of-range latent indices raise
    ``ExplainError`` with code ``explain.unknown_target``.
    """
    n_images = len(images)
    rows = _per_image(targets, n_images)
    resolver = _Resolver(model, images)
    resolved = []
    for i, row in enumerate(rows):
        infos: list[TargetInfo] = []
        for spec in row:
            infos.extend(resolver.resolve(spec, i))
        if not infos:
            raise ExplainError("explain.no_targets", f"image {i} has no targets")
        resolved.append(_unique_columns(infos))
    return resolved


class _Resolver:
    """Looks names up once and computes top-k scores and hierarchy paths lazily."""

    def __init__(self, model: TwoStepLike, images: np.ndarray) -> None:
        self.model = model
        self.images = images
        self.latent_dim = int(model.latent_dim)
        self.vocabulary = tuple(model.vocabulary)
        self.label_index = {name: j for j, name in enumerate(self.vocabulary)}
        self._scores: np.ndarray | None = None
        self._hierarchy: Any = None

    def resolve(self, spec: object, image: int) -> list[TargetInfo]:
        if isinstance(spec, TargetInfo):
            return [spec]
        if isinstance(spec, LatentUnit):
            return [self.latent(spec.index)]
        if isinstance(spec, LabelTarget | str):
            return [self.label(spec.name if isinstance(spec, LabelTarget) else spec)]
        if isinstance(spec, TopKLabels):
            top = np.argsort(-self.scores()[image], kind="stable")[: spec.k]
            return [self.label(self.vocabulary[j]) for j in top]
        if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
            return [self.column(int(spec))]
        raise ExplainError("explain.bad_targets", f"not a target: {spec!r}")

    def latent(self, index: int) -> TargetInfo:
        if not 0 <= index < self.latent_dim:
            raise ExplainError(
                "explain.unknown_target",
                f"latent unit {index} does not exist (the model has {self.latent_dim})",
            )
        if self._hierarchy is None:
            self._hierarchy = self.model.hierarchy()
        path = self._hierarchy.path(index).to_json()
        return TargetInfo(
            column=index, kind="latent", index=index, name=f"latent {index}", hierarchy_path=path
        )

    def label(self, name: str) -> TargetInfo:
        if name not in self.label_index:
            raise ExplainError("explain.unknown_target", f"unknown label {name!r}")
        j = self.label_index[name]
        return TargetInfo(column=self.latent_dim + j, kind="label", index=j, name=name)

    def column(self, column: int) -> TargetInfo:
        if column < self.latent_dim:
            return self.latent(column)
        if column - self.latent_dim >= len(self.vocabulary):
            raise ExplainError("explain.unknown_target", f"output column {column} does not exist")
        return self.label(self.vocabulary[column - self.latent_dim])

    def scores(self) -> np.ndarray:
        if self._scores is None:
            scores = np.asarray(self.model.predict_scores(self.images))
            if scores.shape != (len(self.images), len(self.vocabulary)):
                raise ExplainError(
                    "explain.bad_model", f"predict_scores returned shape {scores.shape}"
                )
            self._scores = scores
        return self._scores


def _per_image(targets: object, n_images: int) -> list[list[object]]:
    if not isinstance(targets, Sequence) or isinstance(targets, str):
        return [[targets] for _ in range(n_images)]
    items = list(targets)
    if not items:
        raise ExplainError("explain.no_targets", "at least one target is required")
    nested = [isinstance(t, Sequence) and not isinstance(t, str) for t in items]
    if not any(nested):
        return [list(items) for _ in range(n_images)]
    if not all(nested) or len(items) != n_images:
        raise ExplainError(
            "explain.bad_targets",
            f"give one target list for all images or one per image ({n_images} images)",
        )
    return [list(row) for row in items]


def _unique_columns(infos: list[TargetInfo]) -> list[TargetInfo]:
    seen: set[int] = set()
    unique = []
    for info in infos:
        if info.column not in seen:
            seen.add(info.column)
            unique.append(info)
    return unique
