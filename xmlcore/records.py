"""Decoded training images on local disk, read a batch at a time.

A training set of 100,000 images at 224 px is 15 GB of uint8: it cannot live in a
worker's memory, and fetching and decoding it from the object store again every epoch
wastes the epoch. ``ImageRecordFile`` keeps the decoded images in one file of
fixed-size uint8 records (row ``i`` at byte ``i * H * W * 3``), written once by a
bounded loading pass and read with ``os.pread`` (no memory map: mapped pages would
count in the process' resident size as the epochs touch them). ``RecordBatches``
is an ``ImageBatches`` over record rows, so the network's fit does not care where the
pixels come from, and Keras' worker threads read the next batches while a step runs.
Memory stays at a few batches whatever the number of images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.pipeline import ImageBatches


class ImageRecordFile:
    """``n`` uint8 images ``(H, W, 3)`` in one file; thread-safe reads and writes."""

    def __init__(self, path: str | Path, n: int, image_size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.n = int(n)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.row_bytes = self.image_size[0] * self.image_size[1] * 3
        self._fd: int | None = None

    @classmethod
    def create(cls, path: str | Path, n: int, image_size: tuple[int, int]) -> ImageRecordFile:
        """A zero-filled file of ``n`` records (sparse on most file systems)."""
        records = cls(path, n, image_size)
        records.path.parent.mkdir(parents=True, exist_ok=True)
        with open(records.path, "wb") as handle:
            handle.truncate(records.n * records.row_bytes)
        return records

    def _handle(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def write(self, row: int, image: np.ndarray) -> None:
        pixels = np.ascontiguousarray(image, dtype=np.uint8)
        if pixels.shape != (*self.image_size, 3):
            raise ConfigError("config.image_size", f"record {row}: shape {pixels.shape}")
        os.pwrite(self._handle(), pixels.tobytes(), row * self.row_bytes)

    def read(self, row: int) -> np.ndarray:
        if not 0 <= row < self.n:
            raise IndexError(row)
        data = os.pread(self._handle(), self.row_bytes, row * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(*self.image_size, 3)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a copy opens its own descriptor


class RecordBatches(ImageBatches):
    """``ImageBatches`` whose items are rows of an ``ImageRecordFile`` (int64 array)."""

    def __init__(
        self, records: ImageRecordFile, rows: np.ndarray, targets: Any = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        kwargs.setdefault("image_size", records.image_size)
        super().__init__(np.asarray(rows, dtype=np.int64).tolist(), targets, **kwargs)
        self.items = np.asarray(rows, dtype=np.int64)  # not a list: 8 bytes a row
        self.records = records

    def _decode(self, item: Any) -> np.ndarray:
        return self.records.read(int(item))

    def _like(self, items: Any, targets: Any, **overrides: Any) -> ImageBatches:
        return RecordBatches(self.records, items, targets, **self._options(**overrides))
