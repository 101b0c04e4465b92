"""xmlcore: interpretable extreme multi-label learning on images, the pure science.

Takes arrays, bytes and plain arguments; returns arrays, bytes and small dataclasses.
Never reads settings, environment variables, databases, object storage or queues.

The public names below are imported on first use (PEP 562), so ``import
xmlcore.labels`` stays free of Keras and TensorFlow (the HTTP API relies on that)
while ``from xmlcore import LimeExplainer`` still works.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # labels, images, metrics: numpy only
    "LabelSpace": "labels",
    "read_manifest": "labels",
    "manifest_to_csv": "labels",
    "manifest_to_jsonl": "labels",
    "decode_image": "images",
    "decode_batch": "images",
    "decode_many": "images",
    "encode_png": "images",
    "encode_jpeg": "images",
    "precision_at_k": "metrics",
    "ndcg_at_k": "metrics",
    "propensities": "metrics",
    "psp_at_k": "metrics",
    "coverage_at_k": "metrics",
    "evaluate_ranking": "metrics",
    "hierarchy_nmi": "metrics",
    "best_match_purity": "metrics",
    "generate_dishes": "datasets",
    "write_dataset": "datasets",
    "read_masks": "datasets",
    "PRESETS": "datasets",
    "generate_digit_scenes": "datasets",
    # the method: Keras
    "DeepNonNegativeAutoencoder": "autoencoder",
    "default_layer_sizes": "autoencoder",
    "choose_layer_sizes": "code_size",
    "LabelHierarchy": "hierarchy",
    "LatentLabelRegressor": "cnn",
    "TwoStepModel": "model",
    "train_two_step": "model",
    "BinaryRelevanceModel": "baselines",
    "NMFTwoStepModel": "baselines",
    # explanations, pictures, faithfulness
    "LimeExplainer": "explain",
    "KernelShapExplainer": "explain",
    "OcclusionExplainer": "explain",
    "IntegratedGradients": "explain",
    "SmoothGrad": "explain",
    "InputXGradient": "explain",
    "GradCAM": "explain",
    "SlicSegmenter": "explain",
    "QuickshiftSegmenter": "explain",
    "FelzenszwalbSegmenter": "explain",
    "AdaptiveSampling": "explain",
    "Explanation": "explain",
    "LatentUnit": "explain",
    "LabelTarget": "explain",
    "TopKLabels": "explain",
    "resolve_targets": "explain",
    "heatmap_png": "viz",
    "blend_png": "viz",
    "mask_png": "viz",
    "graymap_png": "viz",
    "panel_png": "viz",
    "render_overlay": "overlay",
    "ExplainableModel": "methods",
    "make_explainer": "methods",
    "deletion_auc": "evaluate",
    "insertion_auc": "evaluate",
    "pointing_game": "evaluate",
    "mass_in_mask": "evaluate",
    "score_faithfulness": "faithfulness",
    "explain_images": "batch",
    "predict_images": "batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xmlcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xmlcore.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
