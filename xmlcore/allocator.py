"""Undo TensorFlow's malloc patch, which made every large numpy array page-fault.

The first time a process trains from a Python data source (``tf.data`` generator
dataset: every Keras ``fit`` on a ``PyDataset``, so every ``ImageNetwork.fit``),
TensorFlow 2.21 calls ``mallopt(M_TRIM_THRESHOLD, 128 KiB)`` ("Memory patch applied"
in its log). Setting any malloc threshold switches off glibc's dynamic mmap
threshold, so from then on every allocation of 128 KiB or more -- each LIME
perturbation batch, each image batch -- is a fresh ``mmap`` that page-faults on
first touch and is unmapped on free. ``bench/malloc_patch.py`` explains 16 images
with 300 LIME samples both ways in one process: 750,191 minor page faults and 1.9 s of
system time patched, 386 faults and 0.08 s restored (docs/BENCHMARKS.md). Workers
train and explain in one process, so the service paid this on every explanation after
a training (service overhead 1.91 -> 1.12, bench/service_overhead.py).

``restore_malloc_thresholds`` sets the values glibc's own dynamic rule converges to
for large repeated allocations (mmap threshold at its 64-bit maximum of 32 MiB, trim
threshold twice that). A process may then keep up to 64 MiB of freed heap, which is
small next to a model. Without glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import keras

__all__ = ["MallocGuard", "restore_malloc_thresholds"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


@functools.cache
def _mallopt() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "mallopt", None)  # glibc only
    except OSError:
        return None


def restore_malloc_thresholds() -> bool:
    """Large mmap and trim thresholds again; True when glibc took both."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


class MallocGuard(keras.callbacks.Callback):
    """Restores the thresholds once TensorFlow has patched them (after the first
    training batch: the generator dataset exists by then) and at the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self._done = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._done:
            restore_malloc_thresholds()
            self._done = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        restore_malloc_thresholds()
