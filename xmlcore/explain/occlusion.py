"""Occlusion (Zeiler & Fergus, 2014; seed 002 A3): hide a part, watch the output drop.

Two modes share one explainer:

- windows (default): a ``patch`` square slides with ``stride`` over the image (the last
  row/column of windows is pinned to the border, so every pixel is covered); a pixel's
  heatmap value is the mean output drop of the windows that cover it.
- segments: each superpixel is hidden once (give ``segments=`` to ``explain`` or a
  ``segmenter`` to the constructor); the heatmap paints every segment with its drop, and
  the segment fields of ``Explanation`` are filled as for LIME, so the two compare
  directly.

Cost: windows (or segments) per image forward passes plus one, for every target at
once. Occluded images are built vectorised, a whole forward batch at a time (window
boxes by broadcasting row and column ranges), and the windows of consecutive images
are packed into the same batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.base import Explainer, PredictFn, Targets, check_images, normalize_targets
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.explain.sampling import (
    Fill,
    SampleRequest,
    checked_outputs,
    fill_image,
    predict_outputs,
    run_requests,
)
from xmlcore.explain.segmentation import relabel_consecutive, segment_hash

Segmenter = Callable[[np.ndarray], np.ndarray]


class OcclusionExplainer(Explainer):
    """``OcclusionExplainer(predict_fn, patch=8, stride=4, fill="mean", batch_size=256)``.

    ``predict_fn``: uint8 ``(N, H, W, 3)`` -> ``(N, m)``. ``fill``: ``"mean"`` (the
    image's mean colour for windows, each segment's mean colour for segments), one grey
    level, or an ``(r, g, b)`` colour. A heatmap value is ``f(x) - f(x occluded)``:
    positive where hiding the region lowers the target.
    """

    method = "occlusion"

    def __init__(
        self,
        predict_fn: PredictFn,
        *,
        patch: int = 8,
        stride: int = 4,
        fill: Fill = "mean",
        batch_size: int = 256,
        segmenter: Segmenter | None = None,
        num_top_segments: int = 5,
    ) -> None:
        if patch < 1 or stride < 1 or batch_size < 1 or num_top_segments < 0:
            raise ConfigError(
                "config.bad_parameter",
                f"need patch, stride, batch_size >= 1: {patch}, {stride}, {batch_size}",
            )
        self.predict_fn = predict_fn
        self.patch = patch
        self.stride = stride
        self.fill = fill
        self.batch_size = batch_size
        self.segmenter = segmenter
        self.num_top_segments = num_top_segments

    def params(self, mode: str) -> dict[str, Any]:
        """The parameters, JSON-friendly (recorded in provenance)."""
        fill = self.fill if isinstance(self.fill, str | int) else [int(c) for c in self.fill]
        if mode == "segments":
            segmenter = getattr(self.segmenter, "name", None)
            return {"mode": mode, "fill": fill, "segmenter": segmenter}
        return {"mode": mode, "patch": self.patch, "stride": self.stride, "fill": fill}

    def explain(
        self, images: np.ndarray, targets: Targets, *, segments: np.ndarray | None = None
    ) -> list[list[Explanation]]:
        """Explain ``targets`` of ``images``; ``segments`` (int ``(N, H, W)``) switches to
        segment mode, as does a constructor ``segmenter``."""
        arr = check_images(images)
        base = self._predict(arr)
        rows = normalize_targets(targets, len(arr), base.shape[1])
        columns = np.unique([t.column for row in rows for t in row])
        base = base[:, columns]
        if segments is None and self.segmenter is not None:
            segments = np.stack([self.segmenter(image) for image in arr])
        if segments is not None:
            return self._explain_segments(arr, base, columns, rows, _check_segments(segments, arr))
        heat = self._window_heatmaps(arr, base, columns)
        provenance = {"method": self.method, "params": self.params("windows")}
        return [
            [
                self._explanation(i, t, heat[i][..., _where(columns, t)], base, columns, provenance)
                for t in row
            ]
            for i, row in enumerate(rows)
        ]

    def _predict(self, arr: np.ndarray) -> np.ndarray:
        chunks = [
            predict_outputs(self.predict_fn, arr[s : s + self.batch_size], None)
            for s in range(0, len(arr), self.batch_size)
        ]
        return np.concatenate(chunks)

    def _explanation(
        self,
        i: int,
        target: TargetInfo,
        heatmap: np.ndarray,
        base: np.ndarray,
        columns: np.ndarray,
        provenance: dict[str, Any],
    ) -> Explanation:
        return Explanation(
            image_index=i,
            target=target,
            method=self.method,
            heatmap=heatmap.astype(np.float32),
            prediction=float(base[i, _where(columns, target)]),
            provenance=provenance,
        )

    def _window_heatmaps(
        self, arr: np.ndarray, base: np.ndarray, columns: np.ndarray
    ) -> np.ndarray:
        """Per image ``(H, W, C)``: mean drop over the windows covering each pixel."""
        n, h, w = arr.shape[:3]
        row_cover = _cover(h, self.patch, self.stride)  # (nt, H) bool
        col_cover = _cover(w, self.patch, self.stride)  # (nl, W) bool
        k = len(row_cover) * len(col_cover)
        fills = np.stack([fill_image(im, np.zeros((h, w), np.int64), self.fill) for im in arr])
        drops = np.empty((n * k, len(columns)))
        for start in range(0, n * k, self.batch_size):
            flat = np.arange(start, min(n * k, start + self.batch_size))
            img, window = np.divmod(flat, k)
            rows_in = row_cover[window // len(col_cover)]
            cols_in = col_cover[window % len(col_cover)]
            drops[flat] = base[img] - self._occluded_outputs(
                arr, fills, img, rows_in, cols_in, columns
            )
        grid = drops.reshape(n, len(row_cover), len(col_cover), len(columns))
        r, c = row_cover.astype(np.float64), col_cover.astype(np.float64)
        total = np.einsum("ay,bx,nabc->nyxc", r, c, grid, optimize=True)
        counts = np.outer(r.sum(axis=0), c.sum(axis=0))
        return total / counts[None, :, :, None]

    def _occluded_outputs(
        self,
        arr: np.ndarray,
        fills: np.ndarray,
        img: np.ndarray,
        rows_in: np.ndarray,
        cols_in: np.ndarray,
        columns: np.ndarray,
    ) -> np.ndarray:
        """The model on images ``img`` with their windows filled. A predictor that can
        occlude on the device gets boxes (16 bytes a sample) instead of images: built
        on the host, the windows held VGG16 at ~5 images/s on an H200."""
        device = getattr(self.predict_fn, "predict_occluded", None)
        if device is not None:
            used, rows = np.unique(img, return_inverse=True)
            y0, x0 = rows_in.argmax(axis=1), cols_in.argmax(axis=1)
            boxes = np.stack([y0, y0 + rows_in.sum(1), x0, x0 + cols_in.sum(1)], axis=1)
            out = device(arr[used], fills[used], boxes, rows)
            return checked_outputs(out, len(img), columns)
        box = rows_in[:, :, None] & cols_in[:, None, :]
        batch = arr[img]
        np.copyto(batch, fills[img], where=box[..., None])
        return predict_outputs(self.predict_fn, batch, columns)

    def _explain_segments(
        self,
        arr: np.ndarray,
        base: np.ndarray,
        columns: np.ndarray,
        rows: Sequence[Sequence[TargetInfo]],
        segments: np.ndarray,
    ) -> list[list[Explanation]]:
        requests = []
        for image, seg in zip(arr, segments, strict=True):
            k = int(seg.max()) + 1
            masks = (1 - np.eye(k, dtype=np.uint8)).astype(np.uint8)
            requests.append(SampleRequest(image, fill_image(image, seg, self.fill), seg, masks))
        run_requests(self.predict_fn, requests, self.batch_size, columns)
        params = self.params("segments")
        result = []
        for i, (row, req) in enumerate(zip(rows, requests, strict=True)):
            drops = base[i][None, :] - req.result()  # (K, C)
            provenance = {"method": self.method, "params": params}
            provenance["segment_hash"] = segment_hash(req.segments)
            out = []
            for t in row:
                weights = drops[:, _where(columns, t)]
                e = self._explanation(i, t, weights[req.segments], base, columns, provenance)
                e.segments = req.segments
                e.segment_weights = weights.astype(np.float32)
                e.top_segments = _top_segments(weights, self.num_top_segments)
                e.num_samples = len(weights) + 1
                out.append(e)
            result.append(out)
        return result


def _cover(size: int, patch: int, stride: int) -> np.ndarray:
    """``(windows, size)`` bool: which positions each window along one axis covers."""
    patch = min(patch, size)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    pos = np.arange(size)
    begin = np.asarray(starts)[:, None]
    return (pos[None, :] >= begin) & (pos[None, :] < begin + patch)


def _where(columns: np.ndarray, target: TargetInfo) -> int:
    return int(np.searchsorted(columns, target.column))


def _top_segments(weights: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` segments with a positive drop, largest first."""
    order = np.argsort(-weights, kind="stable")[:n]
    return [int(s) for s in order if weights[s] > 0]


def _check_segments(segments: np.ndarray, arr: np.ndarray) -> np.ndarray:
    seg = np.asarray(segments)
    if seg.ndim == 2:
        seg = seg[None]
    if seg.shape != arr.shape[:3] or not np.issubdtype(seg.dtype, np.integer):
        raise ExplainError(
            "explain.bad_segments",
            f"segments must be integer (N, H, W) = {arr.shape[:3]}, got {seg.dtype} {seg.shape}",
        )
    # Ids become 0..K-1 per image so segment j is row j of the mask matrix.
    return np.stack([relabel_consecutive(s) for s in seg])
