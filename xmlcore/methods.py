"""Explanation requests as plain data: method names, their parameters, and targets.

A batch request names a method and parameters as JSON (the service stores and replays
them), so this module turns ``("lime", {"num_samples": 500})`` into an explainer and
``{"kind": "label", "name": "garlic"}`` into a target, refusing unknown names and
parameters with a stable error code instead of passing them on blindly. The
parameter schemas themselves live in ``xmlcore.params`` (shared with the HTTP API).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import keras
import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.explain import (
    AdaptiveSampling,
    Explainer,
    FelzenszwalbSegmenter,
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    KernelShapExplainer,
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
from xmlcore.explain.base import PredictFn
from xmlcore.param_costs import check_image_fit
from xmlcore.params import (
    AdaptiveParams,
    IntegratedGradientsParams,
    KernelShapParams,
    LimeParams,
    OcclusionParams,
    parse_params,
)

TargetSpec = LatentUnit | LabelTarget | TopKLabels

_SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "slic": SlicSegmenter,
    "quickshift": QuickshiftSegmenter,
    "felzenszwalb": FelzenszwalbSegmenter,
}
_GRADIENT_EXPLAINERS: dict[str, Callable[..., Explainer]] = {
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "input_x_gradient": InputXGradient,
    "gradcam": GradCAM,
}


class ExplainableModel(Protocol):
    """What ``make_explainer`` needs of a model.

    ``xmlcore.model.TwoStepModel`` is one; so is any model built to test the explainers
    themselves (``bench/sanity_models.py`` plants the evidence), which is why they go
    through this one door: a sanity check of other code than the service's would prove
    nothing about the service.

    - ``image_size``: ``(H, W)`` the model reads (bounds the methods' parameters);
    - ``device_predictor()``: ``uint8 (N, H, W, 3) -> (N, m)`` float outputs, for the
      perturbation methods (a ``PerturbingPredictor`` or any plain callable; it may
      accept float batches in 0..255 too);
    - ``keras_model()``: the same outputs from raw float32 pixels as a differentiable
      Keras model, for the gradient methods, or ``None`` when the model has none (then
      asking for a gradient method is a ``ConfigError``).
    """

    @property
    def image_size(self) -> tuple[int, int]: ...

    def device_predictor(self) -> PredictFn: ...

    def keras_model(self) -> keras.Model | None: ...


def make_explainer(method: str, model: ExplainableModel, params: Mapping[str, Any]) -> Explainer:
    """An explainer of ``model``'s outputs (latent units, then labels) for ``method``.

    ``params`` are checked against the method's schema (``xmlcore.params``) and against
    the model's image size (``xmlcore.param_costs.check_image_fit``) first, so every
    refusal is a ``ConfigError`` before any work starts."""
    typed = parse_params(method, params)
    check_image_fit(method, typed, model.image_size)
    if isinstance(typed, LimeParams):
        return _lime(model, typed)
    if isinstance(typed, KernelShapParams):
        return _kernel_shap(model, typed)
    options = typed.model_dump()
    if isinstance(typed, OcclusionParams):
        return OcclusionExplainer(model.device_predictor(), **options)
    if isinstance(typed, IntegratedGradientsParams) and isinstance(typed.baseline, tuple):
        options["baseline"] = np.asarray(typed.baseline, dtype=np.float32)
    differentiable = model.keras_model()
    if differentiable is None:
        raise ConfigError(
            "config.method_unavailable",
            f"method {method!r} needs gradients, and this model has no differentiable form",
        )
    return _GRADIENT_EXPLAINERS[method](differentiable, **options)


def _segmenter(params: LimeParams | KernelShapParams) -> Segmenter:
    segmenter_args = {} if params.n_segments is None else {"n_segments": params.n_segments}
    return _SEGMENTERS[params.segmenter](**segmenter_args)


def _kernel_shap(model: ExplainableModel, params: KernelShapParams) -> KernelShapExplainer:
    return KernelShapExplainer(
        model.device_predictor(),
        segmenter=_segmenter(params),
        n_samples=params.n_samples,
        batch_size=params.batch_size,
        fill=params.fill,
        top_k=params.top_k,
        seed=params.seed,
    )


def _lime(model: ExplainableModel, params: LimeParams) -> LimeExplainer:
    adaptive = params.adaptive
    rule = None
    if adaptive is True:
        rule = AdaptiveSampling()
    elif isinstance(adaptive, AdaptiveParams):
        rule = AdaptiveSampling(**adaptive.model_dump())
    return LimeExplainer(
        model.device_predictor(),
        segmenter=_segmenter(params),
        num_samples=params.num_samples,
        batch_size=params.batch_size,
        kernel_width=params.kernel_width,
        fill=params.fill,
        engine=params.engine,
        adaptive=rule,
        top_k=params.top_k,
        seed=params.seed,
        sampler=params.sampler,
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
