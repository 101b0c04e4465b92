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

Usage: ``KERAS_BACKEND=jax python bench/lime_overlap.py [--quick]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from gpu_suite import Sizes, build_model, compare_pipelines, lime_images

from xmlcore.explain.device_sampling import PerturbingPredictor


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
    args = parser.parse_args()
    if args.quick:
        args.base, args.image_size, args.images, args.chunk = "small", 64, 4, 2
        args.num_samples, args.batch_size, args.repeats = 40, 16, 1
    sizes = Sizes(args.image_size, (), 0, 0, 0, 0, 0, 0, 0, 0, 0, args.base)
    model = build_model(args.base, args.image_size, args.policy)
    images = lime_images(sizes, args.images)
    predictor = PerturbingPredictor(model)
    found = compare_pipelines(
        predictor, images, args.chunk, args.num_samples, args.batch_size, args.repeats
    )
    row = {
        "bench": "lime_overlap",
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
