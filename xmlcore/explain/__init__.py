"""Explanations of image models: which pixels push an output up or down.

Perturbation methods (``LimeExplainer``, ``KernelShapExplainer``, ``OcclusionExplainer``) take any
``predict_fn: uint8 (N, H, W, 3) -> (N, m)``; gradient methods (``IntegratedGradients``,
``SmoothGrad``, ``InputXGradient``, ``GradCAM``) take a Keras model. Every explainer's
``explain(images, targets)`` returns, per image, one ``Explanation`` per target.
``resolve_targets`` turns latent units and label names of a two-step model into the
output columns to explain.
"""

from xmlcore.explain.adaptive import AdaptiveSampling
from xmlcore.explain.base import Explainer
from xmlcore.explain.gradient_methods import (
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
)
from xmlcore.explain.kernel_shap import KernelShapExplainer
from xmlcore.explain.lime import LimeExplainer
from xmlcore.explain.occlusion import OcclusionExplainer
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.explain.segmentation import (
    FelzenszwalbSegmenter,
    QuickshiftSegmenter,
    Segmenter,
    SlicSegmenter,
    segment_hash,
)
from xmlcore.explain.targets import LabelTarget, LatentUnit, TopKLabels, resolve_targets

__all__ = [
    "AdaptiveSampling",
    "Explainer",
    "Explanation",
    "FelzenszwalbSegmenter",
    "GradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShapExplainer",
    "LabelTarget",
    "LatentUnit",
    "LimeExplainer",
    "OcclusionExplainer",
    "QuickshiftSegmenter",
    "Segmenter",
    "SlicSegmenter",
    "SmoothGrad",
    "TargetInfo",
    "TopKLabels",
    "resolve_targets",
    "segment_hash",
]
