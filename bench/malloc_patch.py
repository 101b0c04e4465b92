"""TensorFlow's malloc patch against xmlcore.allocator's fix, side by side in one process.

The first training in a process makes TensorFlow 2.21 call ``mallopt(M_TRIM_THRESHOLD,
128 KiB)``, which freezes glibc's mmap threshold at 128 KiB (xmlcore/allocator.py).
``ImageNetwork.fit`` now undoes it, so this script trains once, then sets TensorFlow's
values again by hand ("patched") and times LIME on the same images, then calls
``restore_malloc_thresholds`` ("restored") and times it again. Reported per side: wall
seconds, user and system CPU seconds, minor page faults. Needs glibc (Linux).

Run: ``.venv/bin/python bench/malloc_patch.py [--images 16 --num-samples 300]``; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import numpy as np

from xmlcore.allocator import _mallopt, restore_malloc_thresholds
from xmlcore.batch import explain_images
from xmlcore.datasets import generate_dishes
from xmlcore.methods import parse_target
from xmlcore.model import train_two_step

TF_PATCHED_BYTES = 128 * 1024
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def timed_explain(model: Any, images: np.ndarray, num_samples: int) -> dict[str, float]:
    def explain(batch: np.ndarray) -> None:
        explain_images(model, batch, method="lime", target=parse_target(None),
                       params={"num_samples": num_samples}, k=5)  # fmt: skip

    explain(images[:2])  # warm-up: Keras traces predict once per batch shape
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    explain(images)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": round(time.perf_counter() - started, 3),
        "user_s": round(after.ru_utime - before.ru_utime, 3),
        "system_s": round(after.ru_stime - before.ru_stime, 3),
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=300)
    args = parser.parse_args()
    mallopt = _mallopt()
    if mallopt is None:
        raise SystemExit("needs glibc's mallopt")
    ds = generate_dishes("small", seed=0, n_images=160 + args.images)
    train = np.arange(160)
    model = train_two_step(ds.images[train], ds.label_space.subset(train), epochs=1,
                           ae_params={"epochs": 5})  # fmt: skip
    images = ds.images[160:]
    mallopt(M_TRIM_THRESHOLD, TF_PATCHED_BYTES)  # TensorFlow's patch, as after a fit
    mallopt(M_MMAP_THRESHOLD, TF_PATCHED_BYTES)  # the value it freezes
    patched = timed_explain(model, images, args.num_samples)
    restore_malloc_thresholds()
    restored = timed_explain(model, images, args.num_samples)
    result = {"patched": patched, "restored": restored,
              "speedup": round(patched["wall_s"] / restored["wall_s"], 2),
              "images": args.images, "num_samples": args.num_samples}  # fmt: skip
    for side in ("patched", "restored"):
        print(side, result[side])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
