"""The GPU measurements in one command: forward passes, LIME, other explainers, training.

Each finished measurement is printed at once as one JSON line (``{"measure": ...}``), so
a run cut short by its time limit still reports what it did; the last line is a summary.
Random weights throughout (speed does not depend on what the weights learnt).

Measured, at 224 px with VGG16 and MobileNetV2 (``--smoke``: 32 px, tiny counts):
- ``matmul_peak``: a bf16 matrix product, the machine's practical peak in this run;
- ``forward``: images/s over a batch-size sweep in float32 and mixed bfloat16, from
  device-resident input (compute) and from host uint8 (what the host LIME path pays),
  with achieved TFLOP/s (FLOPs counted from the layers) against ``matmul_peak``;
- ``lime``: our LIME at ``--num-samples``: the host path (perturbed images built in
  numpy and copied) and the device path (``PerturbingPredictor``: masks travel, the
  images are built in the graph), each against the bare forward passes of the same
  samples already on the device, plus where the host path's time goes (segmentation,
  mask building, host->device copies, the ridge solve), measured separately;
- ``lime_overlap`` (in the same steps): 32 images explained in chunks of 8 (a
  worker's batches) one chunk after another, each batch read before the next (the pipeline
  before), with asynchronous dispatch, and overlapped (``explain_stream``: the next
  chunk segmented while the model works), each against the bare forward passes
  (``compare_pipelines``; ``bench/lime_overlap.py`` runs it alone on any machine);
- ``lime_package``: the ``lime`` package on the same model and images, default and
  tuned batch size, against ours on the same images;
- ``explainers``: occlusion, integrated gradients and Grad-CAM, images/s;
- ``train``: one epoch of the two-step model's CNN on the ``paper`` preset's labels,
  images/s (MobileNetV2).

Run ``bench/gpu_suite.sh`` on the GPU machine (it installs the carried wheels and sets
``KERAS_BACKEND=jax``); ``python bench/gpu_suite.py --smoke`` runs anywhere in about a
minute. ``--budget-s`` stops starting new measurements once that much time has passed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import keras
import numpy as np

from xmlcore.backbones import build_backbone
from xmlcore.datasets import generate_dishes
from xmlcore.explain import (
    GradCAM,
    IntegratedGradients,
    LimeExplainer,
    OcclusionExplainer,
    SlicSegmenter,
)
from xmlcore.explain.device_sampling import PerturbingPredictor, _jax_forward
from xmlcore.explain.lime import image_seed
from xmlcore.explain.sampling import SampleRequest, draw_masks, fill_image
from xmlcore.explain.surrogate import fit_weighted_ridge

N_OUTPUTS = 116  # a 16-unit code and 100 decoded labels, like a paper-scale two-step model
TARGETS = [0, 5, 20, 60]


@dataclass(frozen=True)
class Sizes:
    image: int
    batch_sweep: tuple[int, ...]
    lime_images: int
    num_samples: int
    lime_batch: int
    overlap_images: int  # explained in chunks of overlap_chunk: the worker's batches
    overlap_chunk: int
    package_images: int
    grad_images: int
    train_images: int
    matmul_n: int
    heavy_base: str  # VGG16 on the GPU; the smoke run swaps in the small base (CPU time)


FULL = Sizes(224, (64, 256, 512), 16, 1000, 256, 32, 8, 4, 32, 1024, 8192, "vgg16")
SMOKE = Sizes(32, (8, 16), 2, 40, 16, 2, 1, 1, 2, 96, 256, "small")

_start = time.perf_counter()


def emit(measure: str, **fields: Any) -> None:
    row = {"measure": measure, **fields, "elapsed_s": round(time.perf_counter() - _start, 1)}
    print(json.dumps(row), flush=True)


def sync(x: Any) -> Any:
    """Wait for the device: a backend array is pulled to the host (small outputs only)."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def timed(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """Best wall time of ``repeats`` calls, after one untimed warm-up call (compiles)."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(base: str, size: int, policy: str, seed: int = 0) -> keras.Model:
    """Backbone + the two-step regressor's head shape, with ``N_OUTPUTS`` float32 outputs."""
    keras.utils.set_random_seed(seed)
    with dtype_policy(policy):
        backbone = build_backbone(base, "none", (size, size, 3))
        x = keras.layers.GlobalAveragePooling2D()(backbone.output)
        x = keras.layers.Dense(256, activation="relu")(x)
        out = keras.layers.Dense(N_OUTPUTS, dtype="float32")(x)
    return keras.Model(backbone.input, out, name=f"{base}_{policy}")


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds x 2 per image of the convolutions and dense layers."""
    total = 0.0
    for layer in _flat_layers(model):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            per_out = kh * kw * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else c_in)
            total += 2.0 * out[1] * out[2] * out[3] * per_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def _flat_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def host_predict(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """Today's host path: uint8 batch -> float32 on the host -> the compiled predict."""
    return lambda batch: np.asarray(model.predict_on_batch(batch.astype(np.float32)))


def measure_matmul(sizes: Sizes) -> float:
    n = sizes.matmul_n
    a = keras.ops.convert_to_tensor(np.random.rand(n, n).astype(np.float32), "bfloat16")
    b = keras.ops.convert_to_tensor(np.random.rand(n, n).astype(np.float32), "bfloat16")
    repeats = 10

    def run() -> None:
        out = a
        for _ in range(repeats):
            out = keras.ops.matmul(a, b)
        sync(keras.ops.cast(out[0, 0], "float32"))  # TF cannot hand a bf16 scalar to numpy

    seconds = timed(run, 2) / repeats
    tflops = 2.0 * n**3 / seconds / 1e12
    emit("matmul_peak", n=n, dtype="bfloat16", tflops=round(tflops, 1))
    return tflops


def measure_forward(base: str, policy: str, sizes: Sizes, peak: float) -> dict[int, float]:
    model = build_model(base, sizes.image, policy)
    flops = forward_flops(model)
    rates: dict[int, float] = {}
    for bs in sizes.batch_sweep:
        pixels = np.random.randint(0, 256, (bs, sizes.image, sizes.image, 3), np.uint8)
        on_device = keras.ops.convert_to_tensor(pixels.astype(np.float32))
        repeats = 3
        device_s = timed(lambda d=on_device: sync(model.predict_on_batch(d)), repeats)
        host_s = timed(lambda p=pixels: host_predict(model)(p), repeats)
        rates[bs] = bs / device_s
        emit(
            "forward",
            base=base,
            policy=policy,
            batch_size=bs,
            images_per_s=round(bs / device_s, 1),
            images_per_s_from_host_uint8=round(bs / host_s, 1),
            gflops_per_image=round(flops / 1e9, 3),
            tflops=round(flops * bs / device_s / 1e12, 1),
            fraction_of_matmul_peak=round(flops * bs / device_s / 1e12 / peak, 3),
        )
    return rates


def lime_images(sizes: Sizes, n: int) -> np.ndarray:
    return generate_dishes("small", seed=0, n_images=n, image_size=sizes.image).images


def host_breakdown(images: np.ndarray, num_samples: int, batch_size: int) -> dict[str, float]:
    """Host-side stages of our LIME, each timed on its own (no model involved)."""
    segmenter = SlicSegmenter()
    start = time.perf_counter()
    segments = [segmenter(img) for img in images]
    segment_s = time.perf_counter() - start
    start = time.perf_counter()
    requests = []
    for i, (img, seg) in enumerate(zip(images, segments, strict=True)):
        rng = np.random.RandomState(image_seed(0, i))
        masks = draw_masks(rng, num_samples, int(seg.max()) + 1, first=True)
        requests.append(SampleRequest(img, fill_image(img, seg, "mean"), seg, masks))
    buffer = np.empty((batch_size, *images.shape[1:]), np.uint8)
    for req in requests:
        for row in range(0, num_samples, batch_size):
            stop = min(row + batch_size, num_samples)
            req.perturb_rows(buffer[: stop - row], row, stop)
    masks_s = time.perf_counter() - start
    start = time.perf_counter()
    for req in requests:
        x = req.masks.astype(np.float64)
        y = np.random.rand(num_samples, len(TARGETS))
        fit_weighted_ridge(x, y, np.ones(num_samples), 1.0)
    solve_s = time.perf_counter() - start
    return {"segmentation_s": segment_s, "mask_build_s": masks_s, "solve_s": solve_s}


def measure_lime(base: str, policy: str, sizes: Sizes, images: np.ndarray) -> dict[str, float]:
    model = build_model(base, sizes.image, policy)
    n, bs, samples = len(images), sizes.lime_batch, sizes.num_samples
    total = n * samples
    rows = np.random.randint(0, 256, (bs, sizes.image, sizes.image, 3), np.uint8)
    on_device = keras.ops.convert_to_tensor(rows.astype(np.float32))
    batches = -(-total // bs)
    compute_s = timed(lambda: sync(model.predict_on_batch(on_device)), 3) * batches
    host_copy_s = timed(lambda: host_predict(model)(rows), 3) * batches
    host = LimeExplainer(host_predict(model), num_samples=samples, batch_size=bs, seed=0)
    predictor = PerturbingPredictor(model)
    device = LimeExplainer(predictor, num_samples=samples, batch_size=bs, seed=0)
    host_s = timed(lambda: host.explain(images, TARGETS), 1)
    device_s = timed(lambda: device.explain(images, TARGETS), 1)
    parts = host_breakdown(images, samples, bs)
    same = _max_coef_diff(host.explain(images[:1], TARGETS), device.explain(images[:1], TARGETS))
    emit(
        "lime",
        base=base,
        policy=policy,
        n_images=n,
        num_samples=samples,
        batch_size=bs,
        bare_forward_s=round(compute_s, 3),
        forward_from_host_s=round(host_copy_s, 3),
        host_path_s=round(host_s, 3),
        device_path_s=round(device_s, 3),
        host_overhead=round(host_s / compute_s, 3),
        device_overhead=round(device_s / compute_s, 3),
        explanations_per_s_host=round(n / host_s, 2),
        explanations_per_s_device=round(n / device_s, 2),
        host_copy_s=round(max(0.0, host_copy_s - compute_s), 3),
        **{k: round(v, 3) for k, v in parts.items()},
        coef_max_abs_diff_host_vs_device=same,
    )
    overlap = lime_images(sizes, sizes.overlap_images)
    repeats = 1 if sizes is SMOKE else 2
    measure_lime_overlap(
        predictor, base, policy, overlap, sizes.overlap_chunk, samples, bs, repeats
    )
    return {"device_s": device_s, "host_s": host_s}


def bare_forward_s(model: keras.Model, n_samples: int, batch_size: int) -> tuple[float, float]:
    """``n_samples`` forward passes in full batches already on the device (best of 3):
    one ``predict_on_batch`` at a time (the ``lime`` line's baseline), and, on JAX,
    every batch dispatched back to back through the jitted call the LIME pipeline uses
    (no per-call Keras overhead, no wait between batches: the strictest baseline)."""
    shape = tuple(int(v) for v in model.input.shape[1:])
    rows = np.random.randint(0, 256, (batch_size, *shape), np.uint8)
    on_device = keras.ops.convert_to_tensor(rows.astype(np.float32))
    batches = -(-n_samples // batch_size)
    one_by_one = timed(lambda: sync(model.predict_on_batch(on_device)), 3) * batches
    if keras.backend.backend() != "jax":
        return one_by_one, one_by_one
    forward = _jax_forward(model)

    def back_to_back() -> None:
        outputs = [forward(on_device) for _ in range(batches)]
        sync(outputs[-1])

    return one_by_one, timed(back_to_back, 3)


def compare_pipelines(
    predictor: PerturbingPredictor,
    images: np.ndarray,
    chunk: int,
    num_samples: int,
    batch_size: int,
    repeats: int = 1,
) -> dict[str, float]:
    """Our LIME on ``images`` in chunks of ``chunk`` (a worker's batches), three ways:

    - ``sequential_sync``: ``explain`` per chunk, each batch read before the next is
      built (``asynchronous=False``, the pipeline before);
    - ``sequential_async``: ``explain`` per chunk, batch ``i + 1`` dispatched before
      batch ``i`` is read (asynchronous on JAX; the same as sync elsewhere);
    - ``overlapped``: ``explain_stream`` over the chunks: the next chunk segmented and
      this chunk's fits made on the pool while the model works.

    Each against the bare forward passes of the same number of samples, with the
    coefficients' largest difference to the sequential pipeline and the host's own
    work per image (segmentation and fill, one core) for scale. Best of ``repeats``
    rounds, the modes interleaved, after one untimed warm-up each (compilation)."""
    chunks = [(images[i : i + chunk], TARGETS) for i in range(0, len(images), chunk)]
    kwargs = {"num_samples": num_samples, "batch_size": batch_size, "seed": 0}
    synchronous = copy.copy(predictor)  # shares the compiled models: nothing to rebuild
    synchronous.asynchronous = False
    sync_lime = LimeExplainer(synchronous, **kwargs)
    async_lime = LimeExplainer(predictor, **kwargs)
    modes: dict[str, Callable[[], list[list[list[Any]]]]] = {
        "sequential_sync": lambda: [sync_lime.explain(*c) for c in chunks],
        "sequential_async": lambda: [async_lime.explain(*c) for c in chunks],
        "overlapped": lambda: list(async_lime.explain_stream(chunks)),
    }
    results = {name: fn() for name, fn in modes.items()}  # warm-up: compiles every shape
    seconds = dict.fromkeys(modes, float("inf"))
    for _ in range(repeats):  # interleaved, so a load change on a shared machine hits all
        for name, fn in modes.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    bare, strict = bare_forward_s(predictor.model, len(images) * num_samples, batch_size)
    segmenter = SlicSegmenter()
    start = time.perf_counter()
    for image in images:
        fill_image(image, segmenter(image), "mean")
    host_ms = (time.perf_counter() - start) / len(images) * 1e3
    flat = {name: [r for c in found for r in c] for name, found in results.items()}
    diff = max(
        _max_coef_diff(flat["sequential_sync"], flat[name])
        for name in ("sequential_async", "overlapped")
    )
    return {
        "bare_forward_s": bare,
        "bare_forward_back_to_back_s": strict,
        **{f"{k}_s": v for k, v in seconds.items()},
        **{f"{k}_overhead": v / bare for k, v in seconds.items()},
        **{f"{k}_overhead_strict": v / strict for k, v in seconds.items()},
        "overlapped_speedup": seconds["sequential_sync"] / seconds["overlapped"],
        "host_segment_fill_ms_per_image": host_ms,
        "coef_max_abs_diff_vs_sequential_sync": diff,
    }


def measure_lime_overlap(
    predictor: PerturbingPredictor,
    base: str,
    policy: str,
    images: np.ndarray,
    chunk: int,
    num_samples: int,
    batch_size: int,
    repeats: int,
) -> None:
    found = compare_pipelines(predictor, images, chunk, num_samples, batch_size, repeats)
    emit(
        "lime_overlap",
        base=base,
        policy=policy,
        n_images=len(images),
        chunk=chunk,
        num_samples=num_samples,
        batch_size=batch_size,
        **{k: v if k.startswith("coef_") else round(v, 3) for k, v in found.items()},
    )


def _max_coef_diff(a: list[list[Any]], b: list[list[Any]]) -> float:
    return max(
        float(np.abs(x.segment_weights - y.segment_weights).max())
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


def measure_lime_package(base: str, policy: str, sizes: Sizes, images: np.ndarray) -> None:
    from lime import lime_image

    model = build_model(base, sizes.image, policy)
    predict = host_predict(model)
    samples = sizes.num_samples

    def run_package(batch_size: int) -> None:
        for i, image in enumerate(images):
            explainer = lime_image.LimeImageExplainer(
                feature_selection="none", random_state=image_seed(0, i)
            )
            segmenter = SlicSegmenter()
            explainer.explain_instance(
                image,
                predict,
                labels=TARGETS,
                top_labels=None,
                num_features=int(segmenter(image).max()) + 1,
                num_samples=samples,
                batch_size=batch_size,
                segmentation_fn=segmenter,
                random_seed=0,
            )

    ours = LimeExplainer(PerturbingPredictor(model), num_samples=samples, batch_size=256, seed=0)
    ours_s = timed(lambda: ours.explain(images, TARGETS), 1)
    tuned_sizes = (256,)
    # compile every batch shape lime will send before timing it (lime itself is slow)
    last_batches = {(samples - 1) % b or b for b in (10, *tuned_sizes)}
    for size in {10, *tuned_sizes, *last_batches}:
        predict(np.zeros((max(size, 1), sizes.image, sizes.image, 3), np.uint8))
    default_s = timed(lambda: run_package(10), 1, warm_up=False)
    tuned = {b: timed(lambda b=b: run_package(b), 1, warm_up=False) for b in tuned_sizes}
    best = min(tuned, key=lambda k: tuned[k])
    emit(
        "lime_package",
        base=base,
        policy=policy,
        n_images=len(images),
        num_samples=samples,
        ours_s=round(ours_s, 3),
        lime_default_batch10_s=round(default_s, 3),
        lime_tuned_s=round(tuned[best], 3),
        lime_tuned_batch_size=best,
        speedup_vs_lime=round(default_s / ours_s, 1),
        speedup_vs_lime_tuned=round(tuned[best] / ours_s, 1),
    )


def measure_explainers(base: str, policy: str, sizes: Sizes, images: np.ndarray) -> None:
    model = build_model(base, sizes.image, policy)
    explainers = {
        "occlusion": OcclusionExplainer(
            PerturbingPredictor(model), patch=sizes.image // 8, stride=sizes.image // 16
        ),
        "integrated_gradients": IntegratedGradients(model, steps=32, batch_size=64),
        "grad_cam": GradCAM(model, batch_size=64),
    }
    for name, explainer in explainers.items():
        seconds = timed(lambda e=explainer: e.explain(images, TARGETS), 1)
        emit(
            "explainer",
            method=name,
            base=base,
            policy=policy,
            n_images=len(images),
            images_per_s=round(len(images) / seconds, 2),
        )


def measure_training(sizes: Sizes, policy: str) -> None:
    from xmlcore.autoencoder import DeepNonNegativeAutoencoder
    from xmlcore.cnn import LatentLabelRegressor

    data = generate_dishes("paper", seed=0, n_images=sizes.train_images, image_size=sizes.image)
    labels = data.label_space.matrix
    autoencoder = DeepNonNegativeAutoencoder(layer_sizes=(64, 16), epochs=5, seed=0)
    start = time.perf_counter()
    autoencoder.fit(labels)
    ae_s = time.perf_counter() - start
    latent = autoencoder.codes(labels)[-1]
    stamps: list[float] = []
    with dtype_policy(policy):
        regressor = LatentLabelRegressor(
            base="mobilenet_v2",
            image_size=(sizes.image, sizes.image),
            epochs=2,
            batch_size=64,
            validation_split=0.0,
            seed=0,
        )
        regressor.fit(data.images, latent, on_epoch=lambda *_: stamps.append(time.perf_counter()))
    epoch_s = stamps[-1] - stamps[-2] if len(stamps) >= 2 else float("nan")
    emit(
        "train",
        base="mobilenet_v2",
        policy=policy,
        n_images=len(data.images),
        n_labels=int(labels.shape[1]),
        autoencoder_s=round(ae_s, 2),
        cnn_epoch_s=round(epoch_s, 3),
        cnn_images_per_s=round(len(data.images) / epoch_s, 1),
    )


def environment() -> None:
    backend = keras.backend.backend()
    devices: list[str] = []
    if backend == "jax":
        import jax

        devices = [str(d) for d in jax.devices()]
    elif backend == "torch":
        import torch

        devices = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    emit(
        "environment",
        backend=backend,
        devices=devices,
        keras=keras.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, about a minute on CPU")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--only", nargs="*", default=None, help="steps to run (default: all)")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    environment()
    peak = measure_matmul(sizes)
    images = lime_images(sizes, sizes.lime_images)
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            f"forward_{sizes.heavy_base}_bf16",
            lambda: measure_forward(sizes.heavy_base, "mixed_bfloat16", sizes, peak),
        ),
        (
            f"forward_{sizes.heavy_base}_f32",
            lambda: measure_forward(sizes.heavy_base, "float32", sizes, peak),
        ),
        (
            f"lime_{sizes.heavy_base}",
            lambda: measure_lime(sizes.heavy_base, "mixed_bfloat16", sizes, images),
        ),
        (
            "forward_mobilenet_bf16",
            lambda: measure_forward("mobilenet_v2", "mixed_bfloat16", sizes, peak),
        ),
        ("lime_mobilenet", lambda: measure_lime("mobilenet_v2", "mixed_bfloat16", sizes, images)),
        (
            "lime_package",
            lambda: measure_lime_package(
                sizes.heavy_base, "mixed_bfloat16", sizes, images[: sizes.package_images]
            ),
        ),
        (
            "explainers",
            lambda: measure_explainers(
                sizes.heavy_base, "mixed_bfloat16", sizes, images[: sizes.grad_images]
            ),
        ),
        ("train", lambda: measure_training(sizes, "mixed_bfloat16")),
        ("forward_mobilenet_f32", lambda: measure_forward("mobilenet_v2", "float32", sizes, peak)),
    ]
    done, skipped, failed = [], [], []
    for name, step in steps:
        if args.only is not None and name not in args.only:
            continue
        if time.perf_counter() - _start > args.budget_s:
            skipped.append(name)
            emit("skipped", step=name, reason=f"time budget {args.budget_s:.0f} s spent")
            continue
        try:
            step()
            done.append(name)
        except Exception as exc:  # one broken step must not lose the others' figures
            failed.append(name)
            emit("failed", step=name, error=f"{type(exc).__name__}: {exc}"[:500])
    emit("summary", done=done, skipped=skipped, failed=failed, smoke=args.smoke)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
