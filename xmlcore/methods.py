"""Explanation requests as plain data: method names, their parameters, and targets.

A batch request names a method and parameters as JSON (the service stores and replays
them), so this module turns ``("lime", {"num_samples": 500})`` into an explainer and
``{"kind": "label", "name": "garlic"}`` into a target, refusing unknown names and
parameters with a stable error code instead of passing them on blindly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xmlcore.errors import ConfigError
from xmlcore.explain import (
    AdaptiveSampling,
    Explainer,
    FelzenszwalbSegmenter,
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    LabelTarget,
    LatentUnit,
    LimeExplainer,
    OcclusionExplainer,
    QuickshiftSegmenter,
    Segmenter,
    SlicSegmenter,
    SmoothGrad,
    TopKLabels,
)
from xmlcore.model import TwoStepModel

TargetSpec = LatentUnit | LabelTarget | TopKLabels

_SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "slic": SlicSegmenter,
    "quickshift": QuickshiftSegmenter,
    "felzenszwalb": FelzenszwalbSegmenter,
}

# Parameters each method accepts from a request; anything else is refused.
METHOD_PARAMS: dict[str, frozenset[str]] = {
    "lime": frozenset(
        {
            "num_samples",
            "batch_size",
            "kernel_width",
            "fill",
            "top_k",
            "seed",
            "engine",
            "segmenter",
            "n_segments",
            "adaptive",
        }
    ),
    "occlusion": frozenset({"patch", "stride", "fill", "batch_size"}),
    "integrated_gradients": frozenset({"baseline", "steps", "batch_size"}),
    "smoothgrad": frozenset({"noise_scale", "n", "aggregate", "seed", "batch_size"}),
    "input_x_gradient": frozenset({"batch_size"}),
    "gradcam": frozenset({"layer", "batch_size"}),
}
METHODS = tuple(METHOD_PARAMS)


def check_method(method: str, params: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` (``config.unknown_method`` / ``config.bad_parameter``)."""
    if method not in METHOD_PARAMS:
        raise ConfigError("config.unknown_method", f"unknown method {method!r}; one of {METHODS}")
    unknown = sorted(set(params) - METHOD_PARAMS[method])
    if unknown:
        raise ConfigError(
            "config.bad_parameter",
            f"{method} does not take {unknown}; it takes {sorted(METHOD_PARAMS[method])}",
        )


def make_explainer(method: str, model: TwoStepModel, params: Mapping[str, Any]) -> Explainer:
    """An explainer of ``model``'s outputs (latent units, then labels) for ``method``."""
    check_method(method, params)
    options = dict(params)
    try:
        if method == "lime":
            return _lime(model, options)
        if method == "occlusion":
            return OcclusionExplainer(model.device_predictor(), **options)
        keras_model = model.keras_model()
        gradient_methods: dict[str, Callable[..., Explainer]] = {
            "integrated_gradients": IntegratedGradients,
            "smoothgrad": SmoothGrad,
            "input_x_gradient": InputXGradient,
            "gradcam": GradCAM,
        }
        return gradient_methods[method](keras_model, **options)
    except TypeError as exc:  # a parameter of the wrong type
        raise ConfigError("config.bad_parameter", f"{method}: {exc}") from exc


def _lime(model: TwoStepModel, options: dict[str, Any]) -> LimeExplainer:
    segmenter_name = options.pop("segmenter", "slic")
    if segmenter_name not in _SEGMENTERS:
        raise ConfigError("config.bad_parameter", f"segmenter must be one of {sorted(_SEGMENTERS)}")
    segmenter_args = {}
    if "n_segments" in options:
        if segmenter_name != "slic":
            raise ConfigError("config.bad_parameter", "n_segments applies to slic only")
        segmenter_args["n_segments"] = int(options.pop("n_segments"))
    adaptive = options.pop("adaptive", False)
    if isinstance(options.get("fill"), list):
        options["fill"] = tuple(options["fill"])
    return LimeExplainer(
        model.device_predictor(),
        segmenter=_SEGMENTERS[segmenter_name](**segmenter_args),
        adaptive=AdaptiveSampling() if adaptive else None,
        **options,
    )


def parse_target(spec: Mapping[str, Any] | None) -> TargetSpec:
    """``{"kind": "latent", "index": 3}``, ``{"kind": "label", "name": "garlic"}`` or
    ``{"kind": "top_k", "k": 3}`` (the default: the top predicted label)."""
    if spec is None:
        return TopKLabels(1)
    kind = spec.get("kind")
    try:
        if kind == "latent":
            return LatentUnit(int(spec["index"]))
        if kind == "label":
            return LabelTarget(str(spec["name"]))
        if kind == "top_k":
            return TopKLabels(int(spec.get("k", 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("config.bad_target", f"bad target {dict(spec)!r}: {exc}") from exc
    raise ConfigError("config.bad_target", "target kind must be latent, label or top_k")
