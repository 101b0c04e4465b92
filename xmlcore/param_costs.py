"""What a method's parameters cost on a model of a given image size.

``xmlcore.params`` bounds each value alone; two things depend on the model too: how
much memory one forward (or gradient) batch takes, and how many forward passes an
image costs. ``check_image_fit`` refuses parameters a worker could not hold in memory
for this image size; ``forward_passes_per_item`` is the cost estimate a service checks
against a tenant's limit. Pure arithmetic: no Keras.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xmlcore.errors import ConfigError
from xmlcore.params import (
    GRADIENT_METHODS,
    MAX_BATCH_SIZE,
    MAX_MASK_CELLS,
    AdaptiveParams,
    GradientParams,
    IntegratedGradientsParams,
    KernelShapParams,
    LimeParams,
    MethodParams,
    OcclusionParams,
    SmoothGradParams,
)

# Pixel values (H x W x 3) in one batch: 2**26 is 256 MB as float32 for a forward
# batch; a gradient batch also keeps every activation for the backward pass, so it
# gets a quarter of that.
MAX_FORWARD_BATCH_VALUES = 2**26
MAX_GRADIENT_BATCH_VALUES = 2**24
MAX_OCCLUSION_WINDOWS = 65_536  # per image: a 256 x 256 grid of windows
# Felzenszwalb's min_size and quickshift's kernel leave segments of tens of pixels at
# least; at most one segment per this many pixels is assumed for the mask bound.
MIN_PIXELS_PER_SEGMENT = 50
PREDICT = "predict"
# Points of a deletion / insertion curve after the start (fixed: AUCs of every job and
# method compare, and the cost is known before the job runs).
EVALUATION_STEPS = 20


def check_image_fit(method: str, params: MethodParams, image_size: tuple[int, int]) -> None:
    """``ConfigError`` (``config.bad_parameter``) when ``params`` cannot run on
    images of ``image_size`` (height, width) within the memory bounds above."""
    height, width = image_size
    largest = max_batch_size(method, image_size)
    if params.batch_size > largest:
        why = f"batch_size {params.batch_size} is over {largest} for {height}x{width} images"
        _refuse(method, why)
    if isinstance(params, OcclusionParams):
        side = min(height, width)
        for name, value in (("patch", params.patch), ("stride", params.stride)):
            if value > side:
                _refuse(method, f"{name} {value} is over the image side {side}")
        if _windows(params, image_size) > MAX_OCCLUSION_WINDOWS:
            _refuse(method, f"stride {params.stride} gives over {MAX_OCCLUSION_WINDOWS:,} windows")
    if isinstance(params, LimeParams | KernelShapParams) and params.segmenter != "slic":
        segments = max(2, height * width // MIN_PIXELS_PER_SEGMENT)
        samples = lime_samples(params) if isinstance(params, LimeParams) else params.n_samples
        if samples * segments > MAX_MASK_CELLS:
            _refuse(
                method,
                f"samples x segments (up to {segments} with {params.segmenter} at "
                f"{height}x{width}) is over {MAX_MASK_CELLS:,}; lower the samples",
            )


def max_batch_size(method: str, image_size: tuple[int, int]) -> int:
    """The largest ``batch_size`` ``method`` may use on images of ``image_size``."""
    values = image_size[0] * image_size[1] * 3
    budget = MAX_GRADIENT_BATCH_VALUES if method in GRADIENT_METHODS else MAX_FORWARD_BATCH_VALUES
    return max(1, min(MAX_BATCH_SIZE, budget // values))


def forward_passes_per_item(
    method: str,
    params: MethodParams | None,
    *,
    targets: int,
    image_size: tuple[int, int],
    evaluate: Sequence[str] = (),
) -> int:
    """Forward passes one image costs (a gradient evaluation counts as one), the
    prediction of the image included; ``method="predict"`` is a prediction only.
    ``evaluate`` (faithfulness curves asked for) adds ``evaluation_passes``."""
    if method == PREDICT or params is None:
        return 1
    return _explanation_passes(method, params, targets, image_size) + evaluation_passes(
        evaluate, targets
    )


def evaluation_passes(evaluate: Sequence[str], targets: int) -> int:
    """Forward passes of the faithfulness curves of one image: per curve kind and
    target, ``EVALUATION_STEPS + 1`` points and the all-changed end (``xmlcore.evaluate``)."""
    return len(set(evaluate)) * max(1, targets) * (EVALUATION_STEPS + 2)


def _explanation_passes(
    method: str, params: MethodParams, targets: int, image_size: tuple[int, int]
) -> int:
    if isinstance(params, KernelShapParams):
        return params.n_samples + 2  # the coalitions, the background and the image
    if isinstance(params, LimeParams):
        return lime_samples(params) + 1  # every target shares the samples
    if isinstance(params, OcclusionParams):
        return _windows(params, image_size) + 1
    per_target = 1
    if isinstance(params, IntegratedGradientsParams):
        per_target = params.steps
    elif isinstance(params, SmoothGradParams):
        per_target = params.n
    assert isinstance(params, GradientParams)
    return max(1, targets) * per_target + 1


def lime_samples(params: LimeParams) -> int:
    """The most samples LIME may draw per image (adaptive stopping may use fewer)."""
    if isinstance(params.adaptive, AdaptiveParams) and params.adaptive.max_samples is not None:
        return min(params.num_samples, params.adaptive.max_samples)
    return params.num_samples


def _windows(params: OcclusionParams, image_size: tuple[int, int]) -> int:
    def along(size: int) -> int:
        patch = min(params.patch, size)
        return math.ceil((size - patch) / params.stride) + 1

    return along(image_size[0]) * along(image_size[1])


def _refuse(method: str, why: str) -> None:
    raise ConfigError("config.bad_parameter", f"{method} parameters: {why}")
