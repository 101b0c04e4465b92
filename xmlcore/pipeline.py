"""Feeding encoded images to Keras without starving the model.

``ImageBatches`` is a ``keras.utils.PyDataset`` over encoded image bytes (or keys and a
loader that returns bytes). Keras fetches several batches at once on worker threads
(``workers``) and keeps up to ``max_queue_size`` batches ready, so decoding (Pillow
releases the GIL) overlaps with the training step. Threads rather than processes:
decoders are cheap to share and TensorFlow is not fork-safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp

from xmlcore.errors import ConfigError
from xmlcore.images import decode_image


class SparseTargets:
    """Training targets ``[dense (n, d) | sparse (n, p)]``, densified one batch at a time.

    The decoder-aware label term (``xmlcore.label_loss``) trains on the latent codes
    AND the 0/1 label rows; held dense, the labels would cost n x p floats (issue 12:
    the label matrix stays sparse end to end). Batches call ``rows``, splits ``take``.
    """

    def __init__(self, dense: np.ndarray, sparse: Any) -> None:
        self.dense = np.asarray(dense, dtype="float32")
        self.sparse = sp.csr_matrix(sparse, dtype=np.float32)
        if self.dense.ndim != 2 or self.dense.shape[0] != self.sparse.shape[0]:
            raise ConfigError(
                "config.shape", f"targets {self.dense.shape} and {self.sparse.shape} differ in rows"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dense.shape[0], self.dense.shape[1] + self.sparse.shape[1])

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def take(self, rows: Any) -> SparseTargets:
        return SparseTargets(self.dense[rows], self.sparse[rows])

    def rows(self, rows: Any) -> np.ndarray:
        """The dense float32 ``(len(rows), d + p)`` block of a batch."""
        return np.concatenate([self.dense[rows], self.sparse[rows].toarray()], axis=1)


Targets = np.ndarray | SparseTargets


def as_targets(targets: Any) -> Targets | None:
    """``None``, ``SparseTargets`` as given, anything else a float32 array."""
    if targets is None or isinstance(targets, SparseTargets):
        return targets
    return np.asarray(targets, dtype="float32")


def take_rows(targets: Any, rows: Any) -> Any:
    """The targets of ``rows``, still sparse where they were (a split, not a batch)."""
    return targets.take(rows) if isinstance(targets, SparseTargets) else targets[rows]


def batch_rows(targets: Any, rows: Any) -> np.ndarray:
    """The dense targets of one batch."""
    return targets.rows(rows) if isinstance(targets, SparseTargets) else targets[rows]


class ImageBatches(keras.utils.PyDataset):
    """Batches ``(pixels float32 (b, H, W, 3) in 0..255, targets (b, d))`` decoded on demand.

    ``items`` are encoded images (``bytes``), or keys passed to ``loader(key) -> bytes``.
    ``targets`` ``(n, d)`` may be None for prediction, where batches are pixels only.
    ``shuffle`` reorders items every epoch (seeded); the last batch may be partial.
    """

    def __init__(
        self,
        items: Sequence[Any],
        targets: np.ndarray | SparseTargets | None = None,
        *,
        image_size: tuple[int, int],
        batch_size: int = 32,
        loader: Callable[[Any], bytes] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 4,
        max_queue_size: int = 8,
        augment: bool = False,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch_size < 1:
            raise ConfigError("config.batch_size", "batch_size must be >= 1")
        if len(items) == 0:
            raise ConfigError("config.empty", "ImageBatches needs at least one image")
        if targets is not None and len(targets) != len(items):
            raise ConfigError("config.shape", f"{len(items)} images but {len(targets)} target rows")
        self.items: Any = list(items)
        self.targets = as_targets(targets)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = int(batch_size)
        self.loader = loader
        self.shuffle = shuffle
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self.items))
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        pixels = np.stack([self._decode(self.items[i]) for i in rows])
        if self.augment:
            pixels = augment_batch(pixels, self._rng)
        pixels = pixels.astype("float32")
        if self.targets is None:
            return (pixels,)
        return pixels, batch_rows(self.targets, rows)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def output_dim(self) -> int | None:
        return None if self.targets is None else int(self.targets.shape[1])

    def subset(
        self, rows: np.ndarray, *, shuffle: bool | None = None, augment: bool | None = None
    ) -> ImageBatches:
        """The same source restricted to ``rows`` (used for the validation split)."""
        targets = None if self.targets is None else take_rows(self.targets, rows)
        items = (
            self.items[rows]
            if isinstance(self.items, np.ndarray)
            else [self.items[i] for i in rows]
        )
        overrides = {"shuffle": shuffle, "augment": augment}
        return self._like(items, targets, **{k: v for k, v in overrides.items() if v is not None})

    def with_targets(self, targets: np.ndarray | SparseTargets | None) -> ImageBatches:
        """The same images with other targets (e.g. scaled latent codes)."""
        return self._like(self.items, targets)

    def get_rng_state(self) -> dict[str, Any]:
        """The data order and its generator (for a training checkpoint)."""
        return {"bit_generator": self._rng.bit_generator.state, "order": self._order.tolist()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["bit_generator"]
        self._order = np.asarray(state["order"], dtype=np.int64)

    def _options(self, **overrides: Any) -> dict[str, Any]:
        options = {
            "image_size": self.image_size, "batch_size": self.batch_size, "shuffle": self.shuffle,
            "seed": int(self._rng.integers(2**31)), "workers": self.workers,
            "max_queue_size": self.max_queue_size, "augment": self.augment,
        }  # fmt: skip
        return {**options, **overrides}

    def _like(self, items: Any, targets: Any, **overrides: Any) -> ImageBatches:
        return ImageBatches(items, targets, loader=self.loader, **self._options(**overrides))

    def _decode(self, item: Any) -> np.ndarray:
        data = self.loader(item) if self.loader is not None else item
        return decode_image(data, size=self.image_size)


class ArrayBatches(keras.utils.PyDataset):
    """Batches over in-memory uint8 images ``(n, H, W, 3)``, cast to float32 per batch.

    Casting per batch keeps memory at one uint8 copy of the data set. ``augment`` applies
    a random horizontal flip and a shift of up to 1/8 of the side to each training image
    (numpy, outside the model, so the saved model stays a plain feed-forward graph).
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray | SparseTargets | None = None,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.targets = as_targets(targets)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(images))
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        pixels = self.images[rows]
        if self.augment:
            pixels = augment_batch(pixels, self._rng)
        pixels = pixels.astype("float32")
        if self.targets is None:
            return (pixels,)
        return pixels, batch_rows(self.targets, rows)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)

    def get_rng_state(self) -> dict[str, Any]:
        return {"bit_generator": self._rng.bit_generator.state, "order": self._order.tolist()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["bit_generator"]
        self._order = np.asarray(state["order"], dtype=np.int64)


def augment_batch(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flips and small circular shifts of ``(b, H, W, 3)`` images."""
    out = pixels.copy()
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    h, w = out.shape[1:3]
    for i in range(len(out)):
        dy, dx = rng.integers(-(h // 8), h // 8 + 1), rng.integers(-(w // 8), w // 8 + 1)
        out[i] = np.roll(out[i], (int(dy), int(dx)), axis=(0, 1))
    return out
