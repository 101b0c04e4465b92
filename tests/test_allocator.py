"""xmlcore.allocator: large arrays stop page-faulting once TensorFlow's patch is undone."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

from xmlcore.allocator import _mallopt, restore_malloc_thresholds
from xmlcore.cnn import LatentLabelRegressor

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _mallopt() is None, reason="needs glibc mallopt"
)
TF_PATCHED_BYTES = 128 * 1024  # what TensorFlow's generator dataset sets


def _faults_of_large_arrays(rounds: int = 30) -> int:
    """Minor page faults of allocating, touching and freeing 8 MiB arrays."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        block = np.ones(2 * 1024 * 1024, dtype=np.float32)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_restoring_the_thresholds_stops_the_page_faults() -> None:
    mallopt = _mallopt()
    mallopt(-1, TF_PATCHED_BYTES)  # M_TRIM_THRESHOLD, as TensorFlow does
    mallopt(-3, TF_PATCHED_BYTES)  # the mmap threshold it leaves at its 128 KiB start
    patched = _faults_of_large_arrays()
    assert restore_malloc_thresholds()
    _faults_of_large_arrays(2)  # the heap grows once
    restored = _faults_of_large_arrays()
    assert patched > 30 * 100  # every array was a fresh mmap, faulted in page by page
    assert restored < patched / 20


def test_training_leaves_the_thresholds_restored() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    targets = rng.random((24, 2)).astype("float32")
    LatentLabelRegressor(
        image_size=(16, 16), head_units=(4,), epochs=1, batch_size=8, validation_split=0.0
    ).fit(images, targets)
    _faults_of_large_arrays(2)
    assert _faults_of_large_arrays() < 30 * 100 / 4
