"""Service overhead: the same explanation batch in-process and through the service.

Set-up (not timed): the embedded stack (SQLite, Redis, SeaweedFS S3, API, one Celery
worker, beat) starts, a generated dishes data set is uploaded through presigned URLs
and a model is trained THROUGH THE SERVICE. The in-process side then loads that same
artifact from S3 with the worker's own loader (``workers.context``), so both sides
explain with one model: no second training, no copy that could differ.

Timed, after one warm-up batch on each side (Keras traces its predict function once
per process; the worker caches the model per process):

- in-process: decode the PNG bytes + ``xmlcore.batch.explain_images`` in exactly the
  batches the worker uses (chunks of ``chunk_size`` items, split into batches of
  ``images_per_batch``), artifacts encoded, nothing stored;
- service: submit the job over HTTP, one worker fetches the images from S3, explains,
  writes the artifacts to S3 and the item rows to the database; timed from submit to
  the client seeing the final state (poll interval ``--poll``).

The two sides alternate ``--repeats`` times and the best of each is compared (the
machine is shared, so the minimum is the least disturbed run). Goal: ratio <= 1.10.

Usage: ``python bench/service_overhead.py [--items 64] [--num-samples 300]``; the last
line is JSON: ``{"inprocess_s", "service_s", "ratio", "items", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from service_bench import (
    TARGET,
    JobRun,
    Prepared,
    cpu_delta,
    cpu_seconds,
    load_service_model,
    one_thread_env,
    prepare,
    run_job,
    service_settings,
)

from xmlx.settings import Settings
from xmlx.stack import Stack, start_stack


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--items", type=int, default=64, help="images explained per run")
    parser.add_argument("--num-samples", type=int, default=300, help="LIME samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.25, help="client poll interval (s)")
    parser.add_argument("--one-thread", action="store_true",
                        help="TF/BLAS on one thread in this process and the worker")  # fmt: skip
    parser.add_argument("--root", type=Path, help="stack directory (default: a temp dir)")
    return parser.parse_args(argv)


def batches(keys: Sequence[str], settings: Settings) -> list[list[str]]:
    """The worker's batches: chunks of ``chunk_size`` keys, each cut into batches of
    ``images_per_batch``."""
    per_batch = max(1, settings.images_per_batch)
    out = []
    for start in range(0, len(keys), settings.chunk_size):
        chunk = list(keys[start : start + settings.chunk_size])
        out += [chunk[i : i + per_batch] for i in range(0, len(chunk), per_batch)]
    return out


def run_inprocess(
    model: Any, prepared: Prepared, keys: Sequence[str], settings: Settings, params: dict
) -> float:
    """Seconds to decode and explain ``keys`` with xmlcore directly, in worker batches."""
    from xmlcore.batch import explain_images
    from xmlcore.images import decode_image
    from xmlcore.methods import parse_target

    target = parse_target(TARGET)
    started = time.perf_counter()
    for batch in batches(keys, settings):
        images = [
            decode_image(prepared.pngs[key], size=model.image_size,
                         max_pixels=settings.max_image_pixels)
            for key in batch
        ]  # fmt: skip
        reports = explain_images(
            model, np.stack(images), method="lime", target=target, params=params, k=5,
            model_id=prepared.model_id,
        )  # fmt: skip
        assert len(reports) == len(batch)
    return time.perf_counter() - started


def measure(stack: Stack, args: argparse.Namespace, prepared: Prepared) -> dict[str, Any]:
    """Prepare the stack's data and model, then time both sides; the JSON summary."""
    settings = service_settings(stack)
    model = load_service_model(stack, prepared.model_id)
    params = {"num_samples": args.num_samples}
    warm = prepared.keys[: settings.images_per_batch]
    warm_in = run_inprocess(model, prepared, warm, settings, params)
    warm_service = run_job(prepared, warm, params, poll=args.poll)
    print(f"warm-up ({len(warm)} items): in-process {warm_in:.1f} s, "
          f"service {warm_service.wall_s:.1f} s (model load included)", flush=True)  # fmt: skip
    runs = [timed_pair(stack, model, prepared, settings, params, args) for _ in range(args.repeats)]
    print_table(runs)
    best_in = min(runs, key=lambda r: r.inprocess_s)
    best = min(runs, key=lambda r: r.service.wall_s)
    return {
        "inprocess_s": round(best_in.inprocess_s, 3),
        "service_s": round(best.service.wall_s, 3),
        "ratio": round(best.service.wall_s / best_in.inprocess_s, 3),
        "items": len(prepared.keys),
        "service_span_s": round(best.service.span_s, 3),
        "service_queue_s": round(best.service.queue_s, 3),
        "inprocess_cpu_s": round(best_in.inprocess_cpu_s, 3),
        "service_cpu_s": best.service_cpu,
        "cpu_ratio": round(sum(best.service_cpu.values()) / best_in.inprocess_cpu_s, 3),
        "runs_inprocess_s": [round(r.inprocess_s, 3) for r in runs],
        "runs_service_s": [round(r.service.wall_s, 3) for r in runs],
        "num_samples": args.num_samples,
        "preset": args.preset,
        "image_size": args.image_size,
        "images_per_batch": settings.images_per_batch,
        "chunk_size": settings.chunk_size,
        "poll_s": args.poll,
        "one_thread": bool(args.one_thread),
    }


@dataclass(frozen=True)
class Pair:
    inprocess_s: float
    inprocess_cpu_s: float  # CPU seconds of this process while it explained
    service: JobRun
    service_cpu: dict[str, float]  # CPU seconds of each part of the stack during the job


def timed_pair(
    stack: Stack, model: Any, prepared: Prepared, settings: Settings, params: dict,
    args: argparse.Namespace,
) -> Pair:  # fmt: skip
    """One in-process run, then the same batch through the service."""
    before = cpu_seconds(stack)
    seconds = run_inprocess(model, prepared, prepared.keys, settings, params)
    between = cpu_seconds(stack)
    job = run_job(prepared, prepared.keys, params, poll=args.poll)
    service_cpu = cpu_delta(between, cpu_seconds(stack))
    return Pair(seconds, cpu_delta(before, between)["client"], job, service_cpu)


def print_table(runs: list[Pair]) -> None:
    print(f"{'run':>3} | {'in-process s':>12} | {'service s':>9} | {'ratio':>5} | "
          f"{'claimed->done s':>15} | {'CPU s in-proc':>13} | CPU s per service part")  # fmt: skip
    for i, run in enumerate(runs):
        job = run.service
        ratio = job.wall_s / run.inprocess_s
        parts = ", ".join(f"{name} {cpu:.1f}" for name, cpu in run.service_cpu.items())
        print(f"{i + 1:>3} | {run.inprocess_s:>12.2f} | {job.wall_s:>9.2f} | {ratio:>5.2f} | "
              f"{job.span_s:>15.2f} | {run.inprocess_cpu_s:>13.1f} | {parts}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.one_thread:
        os.environ.update(one_thread_env())  # before TensorFlow loads, here and in workers
    with tempfile.TemporaryDirectory(prefix="xmlx-bench-") as scratch:
        root = args.root or Path(scratch)
        with start_stack(root / "stack", workers=1, echo=lambda _: None) as stack:
            prepared = prepare(stack, preset=args.preset, image_size=args.image_size,
                               n_items=args.items, epochs=args.epochs)  # fmt: skip
            print(f"trained through the service in {prepared.train_seconds:.1f} s", flush=True)
            with prepared.client:
                result = measure(stack, args, prepared)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
