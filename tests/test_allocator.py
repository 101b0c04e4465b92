"""xmlcore.allocator: large arrays stop page-faulting once TensorFlow's patch is undone."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmlcore.allocator import _mallopt
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


_MEASURE = """
import json
from tests.test_allocator import TF_PATCHED_BYTES, _faults_of_large_arrays
from xmlcore.allocator import _mallopt, restore_malloc_thresholds
mallopt = _mallopt()
mallopt(-1, TF_PATCHED_BYTES)  # M_TRIM_THRESHOLD, as TensorFlow does
mallopt(-3, TF_PATCHED_BYTES)  # the mmap threshold it leaves at its 128 KiB start
patched = _faults_of_large_arrays()
ok = restore_malloc_thresholds()
_faults_of_large_arrays(2)  # the heap grows once
print(json.dumps([patched, ok, _faults_of_large_arrays()]))
"""


def test_restoring_the_thresholds_stops_the_page_faults() -> None:
    # A fresh process: in a long-lived one a large free chunk left by earlier work can
    # serve the arrays without any mmap, patched or not.
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _MEASURE], cwd=root, capture_output=True,
                         text=True, check=True, timeout=120)  # fmt: skip
    patched, ok, restored = json.loads(out.stdout.strip().splitlines()[-1])
    assert ok
    assert patched > 30 * 100  # every array was a fresh mmap, faulted in page by page
    assert restored < patched / 20


_TRAIN_AND_MEASURE = """
import json
from tests.test_allocator import _faults_after_training
print(json.dumps(_faults_after_training()))
"""


def _faults_after_training() -> int:
    """Page faults of large arrays after a tiny fit (TensorFlow patches malloc in it)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    targets = rng.random((24, 2)).astype("float32")
    LatentLabelRegressor(
        image_size=(16, 16), head_units=(4,), epochs=1, batch_size=8, validation_split=0.0
    ).fit(images, targets)
    _faults_of_large_arrays(2)
    return _faults_of_large_arrays()


@pytest.mark.parametrize("process", ["fresh", "this"])
def test_training_leaves_the_thresholds_restored(process: str) -> None:
    # "this" (the long-lived pytest process) alone can pass without the fix: a large free
    # chunk left by earlier tests may serve the arrays without any mmap. A fresh process
    # has no such chunk, so only the fix keeps its arrays from faulting.
    if process == "this":
        faults = _faults_after_training()
    else:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run([sys.executable, "-c", _TRAIN_AND_MEASURE], cwd=root,
                             capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
        faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert faults < 30 * 100 / 4
