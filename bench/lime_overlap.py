"""Our LIME's pipelines side by side: sequential vs overlapped, against bare forward passes.

The same images, explained in chunks (a worker's batches) three ways (see
``gpu_suite.compare_pipelines``): one chunk after another with each batch read before
the next is built (the pipeline before), the same with the next batch dispatched
before the last is read (asynchronous on JAX), and ``explain_stream`` (the next
chunk's images segmented, and this chunk's fits made, on the thread pool while the
model works). Each time is divided by the bare forward passes of as many samples, from
input already on the device: the overhead ratio (goal <= 1.10 on a GPU).

On a CPU the model and the segmentation share the same cores, so the overlap can win
only the idle time of the model's threads; the GPU suite runs the same comparison on
the GPU (``bash bench/gpu_suite.sh --only lime_vgg16 ...``).

``--worker`` compares instead a worker's batch loop over PNG bytes, old vs new
(``worker_loop``): ``old`` decodes a batch and explains it as one chunk, batch after
batch; ``new`` decodes the next batch on a thread while this one is explained, in
sub-chunks through ``explain_stream`` (``xmlcore.batch.explain_in_chunks``), as
``workers/runner.py`` now does. On two loaded CPU cores little gain is expected.

Usage: ``KERAS_BACKEND=jax python bench/lime_overlap.py [--quick] [--worker]``; the
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from gpu_suite import TARGETS, Sizes, build_model, compare_pipelines, lime_images

from xmlcore.batch import explain_in_chunks, stream_chunk_size
from xmlcore.explain import LimeExplainer
from xmlcore.explain.base import normalize_targets
from xmlcore.explain.device_sampling import PerturbingPredictor
from xmlcore.images import decode_image, encode_png


def padded_rows(chunks: list[int], num_samples: int, batch_size: int) -> int:
    """Perturbed rows sent to the model for chunks of these many images (row 0 of each
    image is its original, predicted apart; each chunk's last batch padded)."""
    return sum(-(-n * (num_samples - 1) // batch_size) * batch_size for n in chunks)


def worker_loop(
    predictor: PerturbingPredictor,
    images: np.ndarray,
    per_batch: int,
    num_samples: int,
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    """A worker's loop over ``images`` as PNG bytes in batches of ``per_batch``, old vs
    new (see the module docstring). Best of ``repeats`` rounds, interleaved, after one
    untimed warm-up each; with the coefficients' largest difference."""
    size = (images.shape[1], images.shape[2])
    pngs = [encode_png(image) for image in images]
    batches = [pngs[i : i + per_batch] for i in range(0, len(pngs), per_batch)]
    explainer = LimeExplainer(predictor, num_samples=num_samples, batch_size=batch_size, seed=0)
    n_outputs = int(predictor(images[:1]).shape[1])

    def decode(batch: list[bytes]) -> np.ndarray:
        return np.stack([decode_image(data, size=size) for data in batch])

    def old() -> list:
        out = []
        for batch in batches:
            decoded = decode(batch)
            out += explainer.explain(decoded, TARGETS)
        return out

    def new() -> list:
        out = []
        with ThreadPoolExecutor(1) as ahead:
            upcoming = ahead.submit(decode, batches[0])
            for index in range(len(batches)):
                decoded = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = ahead.submit(decode, batches[index + 1])
                targets = normalize_targets(TARGETS, len(decoded), n_outputs)
                out += explain_in_chunks(explainer, decoded, targets)
        return out

    modes: dict[str, Callable[[], list]] = {"old": old, "new": new}
    results = {name: run() for name, run in modes.items()}  # warm-up (compilation)
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(repeats):
        for name, run in modes.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    diff = max(
        float(np.abs(a.segment_weights - b.segment_weights).max())
        for ra, rb in zip(results["old"], results["new"], strict=True)
        for a, b in zip(ra, rb, strict=True)
    )
    sub = stream_chunk_size(num_samples, batch_size)
    return {
        "images_per_batch": per_batch,
        # Sample rows the model runs, each run padded to whole batches: sub-chunks pad more.
        "padded_rows_old": padded_rows([len(b) for b in batches], num_samples, batch_size),
        "padded_rows_new": padded_rows(
            [min(sub, len(b) - i) for b in batches for i in range(0, len(b), sub)],
            num_samples,
            batch_size,
        ),
        "sub_chunk": stream_chunk_size(num_samples, batch_size),
        "old_s": best["old"],
        "new_s": best["new"],
        "new_speedup": best["old"] / best["new"],
        "coef_max_abs_diff_old_vs_new": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--base", default="small", help="backbone (xmlcore.backbones)")
    parser.add_argument("--policy", default="float32", help="Keras dtype policy")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4, help="images per explain call")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help="worker batch loop, old vs new")
    parser.add_argument("--per-batch", type=int, default=8, help="--worker: images per batch")
    args = parser.parse_args()
    if args.quick:
        args.base, args.image_size, args.images, args.chunk = "small", 64, 4, 2
        args.num_samples, args.batch_size, args.repeats = 40, 16, 1
    sizes = Sizes(args.image_size, (), 0, 0, 0, 0, 0, 0, 0, 0, 0, args.base)
    model = build_model(args.base, args.image_size, args.policy)
    images = lime_images(sizes, args.images)
    predictor = PerturbingPredictor(model)
    if args.worker:
        per_batch = 2 if args.quick else args.per_batch
        found = worker_loop(
            predictor, images, per_batch, args.num_samples, args.batch_size, args.repeats
        )
    else:
        found = compare_pipelines(
            predictor, images, args.chunk, args.num_samples, args.batch_size, args.repeats
        )
    row = {
        "bench": "lime_overlap_worker" if args.worker else "lime_overlap",
        "backend": keras.backend.backend(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "base": args.base,
        "policy": args.policy,
        "image_size": args.image_size,
        "n_images": args.images,
        "chunk": args.chunk,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        **{k: v if k.startswith("coef_") else round(v, 3) for k, v in found.items()},
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
