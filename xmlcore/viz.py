"""Pictures of explanations, as PNG bytes (seed 002, Fig. 22.3).

- ``graymap_png``: |attribution| as grey (black = none, white = most).
- ``heatmap_png``: signed attribution on a blue-white-red ramp (red pushes the target
  up, blue down, white is zero).
- ``blend_png``: the ramp laid over the image, each pixel as opaque as its attribution
  is strong, so unimportant parts show the image untouched. Faint at small sizes: the
  service's heatmap artifact is ``xmlcore.overlay.render_overlay`` instead.
- ``mask_png``: the top superpixels kept, the rest dimmed, with their borders drawn
  (``segment_outlines``, shared with ``xmlcore.overlay``).
- ``panel_png``: image | blend | mask side by side, with the target, the top
  predictions, the true labels and the hierarchy path written underneath.

Only Pillow and scikit-image are needed; the colour ramp is the five-stop RdBu
diverging scheme written out below, so no plotting library is required.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from xmlcore.errors import ExplainError
from xmlcore.explain.result import Explanation
from xmlcore.images import encode_png

_RAMP_STOPS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_RAMP_COLOURS = np.array(
    [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
    dtype=np.float64,
)
_BOUNDARY = np.array([255, 220, 0], dtype=np.float64)
_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def diverging_colours(values: np.ndarray) -> np.ndarray:
    """Map values in ``[-1, 1]`` (clipped) to RGB uint8 ``(..., 3)``: blue, white, red."""
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    channels = [np.interp(v, _RAMP_STOPS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def normalise(heatmap: np.ndarray, *, symmetric: bool = True) -> np.ndarray:
    """Scale a heatmap to ``[-1, 1]``.

    ``symmetric``: divide by the 99th percentile of the magnitude (clipping above it), so
    zero stays zero (white) and a few extreme pixels, common in gradient maps, do not
    wash out the rest. Otherwise map min..max linearly onto -1..1 (for all-positive maps
    such as SmoothGrad's, which then use the whole ramp). A constant map becomes zeros.
    """
    h = _check_heatmap(heatmap).astype(np.float64)
    if symmetric:
        magnitude = np.abs(h)
        top = float(np.percentile(magnitude, 99)) or float(magnitude.max())
        return np.clip(h / top, -1.0, 1.0) if top > 0 else np.zeros_like(h)
    low, high = float(h.min()), float(h.max())
    return 2 * (h - low) / (high - low) - 1 if high > low else np.zeros_like(h)


def heatmap_png(heatmap: np.ndarray, *, symmetric: bool = True, scale: int = 1) -> bytes:
    """Signed attribution ``(H, W)`` as an RGB PNG on the blue-white-red ramp."""
    return encode_png(_upscale(diverging_colours(normalise(heatmap, symmetric=symmetric)), scale))


def graymap_png(heatmap: np.ndarray, *, scale: int = 1) -> bytes:
    """``|attribution|`` as a greyscale PNG, the largest magnitude white."""
    magnitude = np.abs(normalise(heatmap))
    return encode_png(_upscale(np.rint(255 * magnitude).astype(np.uint8), scale))


def blend_png(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, *, scale: int = 1
) -> bytes:
    """The ramp over ``image`` (uint8 ``(H, W, 3)``), opacity ``alpha * |attribution|``."""
    return encode_png(_upscale(blend(image, heatmap, alpha), scale))


def mask_png(
    image: np.ndarray,
    segments: np.ndarray,
    top_segments: Sequence[int],
    dim: float = 0.3,
    boundaries: bool = True,
    *,
    scale: int = 1,
) -> bytes:
    """``image`` with only ``top_segments`` at full brightness, the rest times ``dim``."""
    return encode_png(_upscale(mask(image, segments, top_segments, dim, boundaries), scale))


def blend(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Array form of ``blend_png``: uint8 ``(H, W, 3)``."""
    img = _check_image(image, heatmap.shape)
    v = normalise(heatmap)
    weight = (alpha * np.abs(v))[..., None]
    out = img.astype(np.float64) * (1 - weight) + diverging_colours(v) * weight
    return np.rint(out).astype(np.uint8)


def mask(
    image: np.ndarray,
    segments: np.ndarray,
    top_segments: Sequence[int],
    dim: float = 0.3,
    boundaries: bool = True,
) -> np.ndarray:
    """Array form of ``mask_png``: uint8 ``(H, W, 3)``."""
    seg = np.asarray(segments)
    img = _check_image(image, seg.shape).astype(np.float64)
    kept = np.isin(seg, np.asarray(list(top_segments), dtype=np.int64))
    out = np.where(kept[..., None], img, img * dim)
    if boundaries:
        out[segment_outlines(seg, top_segments)] = _BOUNDARY
    return np.rint(out).astype(np.uint8)


def segment_outlines(segments: np.ndarray, chosen: Sequence[int], width: int = 1) -> np.ndarray:
    """bool ``(H, W)``: the pixels just inside the border of each ``chosen`` segment,
    ``width`` pixels thick.

    ``background=-1`` because scikit-image treats label 0 as background and never
    outlines it by default, yet 0 is an ordinary superpixel id here (SLIC starts at 0).
    """
    seg = np.asarray(segments)
    kept = np.isin(seg, np.asarray(list(chosen), dtype=np.int64))
    edge = find_boundaries(seg, mode="inner", background=-1)
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge & kept


def top_pixel_segments(heatmap: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """A two-segment map for pixel methods: 1 on the top ``fraction`` of pixels, else 0."""
    h = _check_heatmap(heatmap)
    threshold = np.quantile(h, 1 - fraction)
    return ((h >= threshold) & (h > 0)).astype(np.int32)


def panel_png(
    image: np.ndarray,
    explanation: Explanation,
    predictions: Sequence[tuple[str, float]],
    hierarchy_text: str | None = None,
    true_labels: Sequence[str] | None = None,
    *,
    scale: int = 3,
) -> bytes:
    """One image explained: image | blend | mask, and text lines underneath.

    The mask uses the explanation's superpixels and ``top_segments`` when it has them
    (LIME, segment occlusion), else the top 20% of pixels. Tiles are upscaled ``scale``
    times with nearest-neighbour so small images stay crisp.
    """
    img = _check_image(image, explanation.heatmap.shape)
    by_segment = explanation.segments is not None
    if explanation.segments is not None:
        segments, top = explanation.segments, list(explanation.top_segments)
    else:
        segments, top = top_pixel_segments(explanation.heatmap), [1]
    kept = mask(img, segments, top, boundaries=by_segment)  # pixel masks have no borders
    tiles = [img, blend(img, explanation.heatmap), kept]
    titles = ["image", f"{explanation.method}", "most relevant"]
    lines = _panel_lines(explanation, predictions, hierarchy_text, true_labels)
    return encode_png(_compose(tiles, titles, lines, scale))


def _panel_lines(
    explanation: Explanation,
    predictions: Sequence[tuple[str, float]],
    hierarchy_text: str | None,
    true_labels: Sequence[str] | None,
) -> list[str]:
    target = explanation.target
    value = "" if explanation.prediction is None else f" = {explanation.prediction:.3f}"
    lines = [f"explains {target.kind} '{target.name}'{value}"]
    lines.append("predicted: " + ", ".join(f"{name} {score:.2f}" for name, score in predictions))
    if true_labels is not None:
        lines.append("true: " + ", ".join(true_labels))
    if hierarchy_text:
        lines.append("hierarchy: " + hierarchy_text)
    return lines


def _compose(
    tiles: list[np.ndarray], titles: list[str], lines: list[str], scale: int
) -> np.ndarray:
    font = _font(14)
    pad, title_h, line_h = 8, 20, 18
    big = [_upscale(t, scale) for t in tiles]
    tile_h, tile_w = big[0].shape[:2]
    width = len(big) * tile_w + (len(big) + 1) * pad
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # Hierarchy paths arrive as multi-line text (a path, then one line per unit).
    wrapped = [
        w
        for line in lines
        for part in line.split("\n")
        for w in _wrap(part, font, width - 2 * pad, measure)
    ]
    height = pad + title_h + tile_h + pad + len(wrapped) * line_h + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, (tile, title) in enumerate(zip(big, titles, strict=True)):
        left = pad + k * (tile_w + pad)
        draw.text((left, pad), title, fill=_INK, font=font)
        canvas.paste(Image.fromarray(tile), (left, pad + title_h))
    top = pad + title_h + tile_h + pad
    for n, text in enumerate(wrapped):
        draw.text((pad, top + n * line_h), text, fill=_INK, font=font)
    return np.asarray(canvas)


def _wrap(
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
    draw: ImageDraw.ImageDraw,
) -> list[str]:
    """Greedy word wrap to ``width`` pixels; continuation lines are indented."""
    out: list[str] = []
    current = ""
    for word in text.split(" "):
        trial = f"{current} {word}" if current else word
        if current and draw.textlength(trial, font=font) > width:
            out.append(current)
            current = "    " + word
        else:
            current = trial
    out.append(current)
    return out


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType: the small bitmap font
        return ImageFont.load_default()


def _upscale(arr: np.ndarray, scale: int) -> np.ndarray:
    if scale < 1:
        raise ExplainError("explain.bad_scale", f"scale must be >= 1, got {scale}")
    return arr if scale == 1 else np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    h = np.asarray(heatmap)
    if h.ndim != 2 or h.size == 0 or not np.all(np.isfinite(h)):
        raise ExplainError("explain.bad_heatmap", f"a heatmap must be finite (H, W), got {h.shape}")
    return h


def _check_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != shape:
        raise ExplainError(
            "explain.bad_images",
            f"expected a uint8 image of shape {(*shape, 3)}, got {img.dtype} {img.shape}",
        )
    return img
