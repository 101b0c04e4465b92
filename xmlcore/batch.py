"""One call per batch of images: predictions, explanations and their artifacts.

This is what a service worker runs on a chunk: decoded images in, per-image JSON
summaries and artifact bytes out. Every image of a batch shares the forward passes
(the explainer packs their samples together), and every target of an image shares its
samples, so a chunk costs about ``num_samples x images`` forward passes and no more.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmlcore.explain import (
    Explainer,
    Explanation,
    LimeExplainer,
    SlicSegmenter,
    TargetInfo,
    resolve_targets,
)
from xmlcore.faithfulness import AUC_NAMES, score_faithfulness
from xmlcore.hierarchy import LabelHierarchy
from xmlcore.methods import TargetSpec, make_explainer
from xmlcore.model import TwoStepModel
from xmlcore.overlay import OverlayScale, render_overlay
from xmlcore.param_costs import PREDICT, max_batch_size
from xmlcore.viz import mask_png

ARTIFACT_NAMES = ("heatmap.png", "mask.png", "weights.npy")
MAX_HEATMAPS = 8
"""Overlays written per image: ``heatmap.png`` for the first target, then
``heatmap_2.png`` .. ``heatmap_8.png`` for the next ones; targets past the eighth have
their weights in ``weights.npy`` but no picture (bounded storage per item)."""


def heatmap_name(position: int) -> str:
    """The artifact of the explanation at ``position`` (0-based) of a result."""
    return "heatmap.png" if position == 0 else f"heatmap_{position + 1}.png"


# LIME sub-chunks of a batch (see ``explain_in_chunks``): forward batches per chunk, images at most.
STREAM_DEVICE_BATCHES = 8
STREAM_MAX_IMAGES = 8


@dataclass
class ImageReport:
    """What one image yields: JSON-ready ``result`` and ``artifacts`` (name -> bytes)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


def predict_images(model: TwoStepModel, images: np.ndarray, *, k: int = 5) -> list[ImageReport]:
    """Top-``k`` labels with scores, the latent code, and the hierarchy path of the most
    active latent unit, for every image."""
    return [ImageReport(result=result) for result in _predictions(model, images, k)]


def explain_images(
    model: TwoStepModel,
    images: np.ndarray,
    *,
    method: str = "lime",
    target: TargetSpec,
    params: Mapping[str, Any] | None = None,
    k: int = 5,
    model_id: str | None = None,
    evaluate: Sequence[str] = (),
) -> list[ImageReport]:
    """Predict and explain ``images`` (uint8 ``(N, H, W, 3)``) for ``target``.

    ``evaluate`` (``"deletion"``, ``"insertion"``) adds each explanation's faithfulness
    (``xmlcore.faithfulness``) to its summary, as ``faithfulness`` (with how it was
    measured and its cost) and as ``metrics`` ``deletion_auc`` / ``insertion_auc`` (so
    the job's means come with the other result metrics, ``xmlcore.result_metrics``), and
    their mean over the image's targets to the result, as ``faithfulness``.

    Each report's ``result`` has ``top_labels``, ``latent`` and ``explanations`` (one
    summary per resolved target, the hierarchy path included for latent units; the
    first ``MAX_HEATMAPS`` with ``overlay``: their artifact's name and colour scale);
    its artifacts are one overlay per target (``xmlcore.overlay``: ``heatmap.png``,
    ``heatmap_2.png``, ...), the first target's top-superpixel mask, and
    ``weights.npy`` with every target's superpixel weights (``(T, K)``) or, for pixel
    methods, heatmaps (``(T, H, W)``).
    """
    explainer = make_explainer(method, model, params or {})
    targets = resolve_targets(model, images, target)
    explained = explain_in_chunks(explainer, images, targets)
    predictions = _predictions(model, images, k)
    faithfulness = None
    if evaluate:
        batch_size = min(256, max_batch_size(PREDICT, model.image_size))
        faithfulness = score_faithfulness(
            model.device_predictor(), images, explained, evaluate, batch_size=batch_size
        )
    reports = []
    for i, explanations in enumerate(explained):
        if model_id is not None:
            for explanation in explanations:
                explanation.provenance["model_id"] = model_id
        result = predictions[i]
        result["explanations"] = [e.to_json() for e in explanations]
        if faithfulness is not None:
            for summary, score in zip(result["explanations"], faithfulness[i], strict=True):
                summary["faithfulness"] = score
                # An undefined curve (None) has no value to average.
                aucs = {name: score[name] for name in AUC_NAMES if score.get(name) is not None}
                summary["metrics"] = {**summary.get("metrics", {}), **aucs}
            result["faithfulness"] = _image_faithfulness(faithfulness[i])
        artifacts, scales = _artifacts(images[i], explanations)
        for summary, (name, scale) in zip(result["explanations"], scales, strict=False):
            summary["overlay"] = {"artifact": name, "scale": scale.to_json()}
        reports.append(ImageReport(result, artifacts))
    return reports


def explain_in_chunks(
    explainer: Explainer, images: np.ndarray, targets: Sequence[Sequence[TargetInfo]]
) -> list[list[Explanation]]:
    """``explainer.explain(images, targets)``; for LIME, the same result through
    ``explain_stream`` over sub-chunks, so that segmenting the next sub-chunk and fitting
    the last one overlap the model's forward passes (a worker's whole batch would be
    one chunk, its host work never overlapped)."""
    if not isinstance(explainer, LimeExplainer):
        return explainer.explain(images, targets)
    size = stream_chunk_size(explainer.num_samples, explainer.batch_size)
    if len(images) <= size:
        return explainer.explain(images, targets)
    chunks = ((images[i : i + size], targets[i : i + size]) for i in range(0, len(images), size))
    return [row for part in explainer.explain_stream(chunks, consecutive=True) for row in part]


def stream_chunk_size(num_samples: int, batch_size: int) -> int:
    """Images per sub-chunk: enough for ``STREAM_DEVICE_BATCHES`` forward batches (at a
    chunk's end the last batch is padded, so a smaller chunk wastes more of the device),
    at most ``STREAM_MAX_IMAGES`` (the first chunk's segmentation is not overlapped)."""
    wanted = -(-STREAM_DEVICE_BATCHES * batch_size // num_samples)
    return max(1, min(STREAM_MAX_IMAGES, wanted))


def _image_faithfulness(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The image's scores: the mean AUC over its targets (None where every target's
    curve is undefined), and the forward passes the curves cost."""
    out: dict[str, Any] = {"forward_passes": sum(s["forward_passes"] for s in scores)}
    for name in AUC_NAMES:
        if name in scores[0]:
            values = [s[name] for s in scores if s[name] is not None]
            out[name] = round(float(np.mean(values)), 6) if values else None
    return out


def _predictions(model: TwoStepModel, images: np.ndarray, k: int) -> list[dict[str, Any]]:
    latent = model.predict_latent(images)
    scores = model.predict_scores(images)
    hierarchy = model.hierarchy()
    return [
        _prediction(model.vocabulary, hierarchy, latent[i], scores[i], k)
        for i in range(len(images))
    ]


def _prediction(
    vocabulary: Sequence[str],
    hierarchy: LabelHierarchy,
    latent: np.ndarray,
    scores: np.ndarray,
    k: int,
) -> dict[str, Any]:
    order = np.argsort(-scores, kind="stable")[:k]
    # The most active top-layer unit and its path down to label sets: the paper's
    # read-out of "which group of labels this image is about".
    unit = int(np.argmax(latent))
    path = hierarchy.path(unit)
    return {
        "top_labels": [
            {"label": vocabulary[j], "score": round(float(scores[j]), 6)} for j in order
        ],
        "latent": [round(float(v), 6) for v in latent],
        "top_latent": {"unit": unit, "path": path.to_json(), "text": path.to_text()},
    }


def _artifacts(
    image: np.ndarray, explanations: list[Explanation]
) -> tuple[dict[str, bytes], list[tuple[str, OverlayScale]]]:
    """The artifacts of one image, and (name, colour scale) of each overlay."""
    artifacts: dict[str, bytes] = {}
    scales: list[tuple[str, OverlayScale]] = []
    slic: np.ndarray | None = None
    for position, explanation in enumerate(explanations[:MAX_HEATMAPS]):
        segments = explanation.segments
        if segments is None:
            # Pixel methods have no superpixels: rank SLIC segments by mean attribution
            # so the mask and the outlines mean the same thing for every method.
            slic = SlicSegmenter()(image) if slic is None else slic
            segments = slic
        top = explanation.top_segments or _top_segments(explanation.heatmap, segments)
        overlay = render_overlay(image, explanation.heatmap, segments=segments, top_segments=top)
        name = heatmap_name(position)
        artifacts[name] = overlay.png()
        scales.append((name, overlay.scale))
        if position == 0:
            artifacts["mask.png"] = mask_png(image, segments, top)
    artifacts["weights.npy"] = _weights(explanations)
    return artifacts, scales


def _top_segments(heatmap: np.ndarray, segments: np.ndarray, n: int = 5) -> list[int]:
    sums = np.bincount(segments.ravel(), weights=heatmap.ravel().astype(np.float64))
    sizes = np.maximum(np.bincount(segments.ravel()), 1)
    return [int(s) for s in np.argsort(-(sums / sizes), kind="stable")[:n]]


def _weights(explanations: list[Explanation]) -> bytes:
    if all(e.segment_weights is not None for e in explanations):
        array = np.stack([np.asarray(e.segment_weights, np.float32) for e in explanations])
    else:
        array = np.stack([e.heatmap.astype(np.float32) for e in explanations])
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
