"""Superpixel segmenters for perturbation explainers.

Every segmenter is a callable ``image (H, W, 3) uint8 -> segments (H, W) int32`` whose
ids are exactly ``0..K-1`` (relabelled consecutively). That matters: LIME and occlusion
turn segment ``j`` on and off through column ``j`` of a mask matrix, so a gap or an id
starting at 1 (skimage's ``slic`` default) would leave a superpixel never perturbed.

``SlicSegmenter`` is the default: fast and regular on 64-224 px images.
``QuickshiftSegmenter`` carries the reference ``lime`` package's defaults (slow).
``FelzenszwalbSegmenter`` is a fast graph-based alternative.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from skimage.segmentation import felzenszwalb, quickshift, slic

from xmlcore.errors import ConfigError, ExplainError


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer ids to ``0..K-1`` (order of first sorted id), as int32."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def segment_hash(segments: np.ndarray) -> str:
    """A short, stable fingerprint of a segment map (shape + int32 bytes), for provenance."""
    arr = np.ascontiguousarray(segments, dtype=np.int32)
    digest = hashlib.sha256()
    digest.update(repr(arr.shape).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


class Segmenter(ABC):
    """Base: ``__call__(image)`` validates, segments and relabels to ``0..K-1``."""

    name: ClassVar[str] = "segmenter"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ExplainError(
                "explain.bad_images",
                f"segmenters take one uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}",
            )
        return relabel_consecutive(self._segment(arr))

    @abstractmethod
    def _segment(self, image: np.ndarray) -> np.ndarray:
        """Raw integer labels ``(H, W)``; ids need not be consecutive."""

    def params(self) -> dict[str, Any]:
        """The parameters, JSON-friendly (recorded in provenance)."""
        return dict(vars(self))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}


@dataclass(frozen=True)
class SlicSegmenter(Segmenter):
    """k-means in (colour, position) space; ``n_segments`` is a target, not exact.

    ``n_segments=50`` gives superpixels of ~80 px at 64x64 and ~1000 px at 224x224: big
    enough to hide an object part, few enough that 1,000 samples fit a 50-weight ridge.
    """

    n_segments: int = 50
    compactness: float = 10.0
    sigma: float = 1.0
    max_num_iter: int = 10
    start_label: int = 0
    name: ClassVar[str] = "slic"

    def __post_init__(self) -> None:
        if self.n_segments < 1 or self.compactness <= 0 or self.sigma < 0:
            raise ConfigError("config.segmenter", f"invalid slic parameters: {self}")

    def _segment(self, image: np.ndarray) -> np.ndarray:
        return slic(
            image,
            n_segments=self.n_segments,
            compactness=self.compactness,
            sigma=self.sigma,
            max_num_iter=self.max_num_iter,
            start_label=self.start_label,
            channel_axis=-1,
        )


@dataclass(frozen=True)
class QuickshiftSegmenter(Segmenter):
    """Mode seeking in (colour, position); the ``lime`` package's default segmenter.

    Defaults are lime's (``kernel_size=4, max_dist=200, ratio=0.2``); ``seed`` is passed
    as skimage's ``rng`` (the argument lime still calls ``random_seed``).
    """

    kernel_size: float = 4.0
    max_dist: float = 200.0
    ratio: float = 0.2
    sigma: float = 0.0
    seed: int = 42
    name: ClassVar[str] = "quickshift"

    def __post_init__(self) -> None:
        if self.kernel_size <= 0 or self.max_dist <= 0 or not 0 <= self.ratio <= 1:
            raise ConfigError("config.segmenter", f"invalid quickshift parameters: {self}")

    def _segment(self, image: np.ndarray) -> np.ndarray:
        return quickshift(
            image,
            ratio=self.ratio,
            kernel_size=self.kernel_size,
            max_dist=self.max_dist,
            sigma=self.sigma,
            rng=self.seed,
            channel_axis=-1,
        )


@dataclass(frozen=True)
class FelzenszwalbSegmenter(Segmenter):
    """Graph-based merging; ``scale`` larger -> fewer, bigger segments."""

    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 50
    name: ClassVar[str] = "felzenszwalb"

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.sigma < 0 or self.min_size < 1:
            raise ConfigError("config.segmenter", f"invalid felzenszwalb parameters: {self}")

    def _segment(self, image: np.ndarray) -> np.ndarray:
        return felzenszwalb(
            image, scale=self.scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1
        )
