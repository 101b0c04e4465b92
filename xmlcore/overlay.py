"""Heatmap overlays people can read: legible size, the top segments standing out.

The old artifact (``viz.blend``) laid a light ramp at most half opaque over a 64 px
image: next to the original it looked almost the same. ``render_overlay`` instead

- upscales to at least ``min_side`` pixels (nearest neighbour, so superpixel edges and
  small objects stay crisp rather than smeared);
- shows the top segments (the explanation's own, or for pixel methods the top
  ``top_fraction`` of pixels) in strong colour and dims everything else towards grey,
  so the eye goes where the explanation points;
- outlines each top segment (segment id 0 included);
- appends a colour scale with the attribution values at its ends, which are the
  numbers the colours stand for (``OverlayScale``; the gallery and the report print
  them too).

Colours are the blue-white-red diverging ramp of ``xmlcore.viz`` (red raises the
explained output, blue lowers it), scaled symmetrically by ``viz.normalise``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from xmlcore.errors import ExplainError
from xmlcore.images import encode_png
from xmlcore.viz import diverging_colours, normalise, segment_outlines

TOP_OPACITY = 0.8
"""Colour share of a top-segment pixel: strong enough that the colour, not the photo,
is what one sees there (ΔE to the original about 4x that of ``viz.blend``, see
``bench/overlay_contrast.py``), weak enough that the object stays recognisable."""
REST_KEEP = 0.35
"""How much of the photo the other pixels keep; the rest goes to mid-grey."""
_GREY = 128.0
_OUTLINE = np.array([255.0, 221.0, 0.0])  # yellow: on neither end of the ramp
_SCALE_HEIGHT = 28
_INK = (20, 20, 20)


@dataclass(frozen=True)
class OverlayScale:
    """The attribution values at the two ends of the colour scale (blue, red)."""

    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class Overlay:
    """``pixels``: uint8 ``(H', W', 3)`` overlay and scale strip; ``scale``: its values."""

    pixels: np.ndarray
    scale: OverlayScale

    def png(self) -> bytes:
        return encode_png(self.pixels)


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    segments: np.ndarray | None = None,
    top_segments: Sequence[int] | None = None,
    top_fraction: float = 0.2,
    min_side: int = 256,
) -> Overlay:
    """The overlay of ``heatmap`` (float ``(H, W)``) on ``image`` (uint8 ``(H, W, 3)``).

    ``segments``/``top_segments``: the explanation's superpixels and its top ones; when
    absent, the top ``top_fraction`` of pixels (by attribution) are the top region and
    get no outline. The result is at least ``min_side`` pixels on its shorter side
    (upscaled by a whole factor), plus a scale strip underneath."""
    img = _check(image, heatmap)
    if not 0 < top_fraction <= 1 or min_side < 1:
        raise ExplainError("explain.bad_parameter", "top_fraction in (0, 1], min_side >= 1")
    values = normalise(heatmap)
    if segments is not None and top_segments:
        top = np.isin(segments, np.asarray(list(top_segments), dtype=np.int64))
    else:
        top = heatmap >= np.quantile(heatmap, 1 - top_fraction)
    factor = max(1, math.ceil(min_side / min(img.shape[:2])))
    out = _colour(img, values, top)
    out = _up(out, factor)
    if segments is not None and top_segments:
        outline = segment_outlines(_up(np.asarray(segments), factor), top_segments, width=2)
        out[outline] = _OUTLINE
    scale = _scale_values(heatmap)
    strip = _scale_strip(out.shape[1], scale)
    return Overlay(np.concatenate([np.rint(out).astype(np.uint8), strip]), scale)


def _colour(img: np.ndarray, values: np.ndarray, top: np.ndarray) -> np.ndarray:
    photo = img.astype(np.float64)
    ramp = diverging_colours(values).astype(np.float64)
    strong = photo * (1 - TOP_OPACITY) + ramp * TOP_OPACITY
    dimmed = photo * REST_KEEP + _GREY * (1 - REST_KEEP)
    # Outside the top region the ramp still tints in proportion to |value|, so a strong
    # pixel just below the cut is not hidden.
    weight = (0.4 * np.abs(values))[..., None]
    faint = dimmed * (1 - weight) + ramp * weight
    return np.where(top[..., None], strong, faint)


def _scale_values(heatmap: np.ndarray) -> OverlayScale:
    """The values at the ramp's ends: +-the magnitude ``normalise`` divides by."""
    magnitude = np.abs(np.asarray(heatmap, dtype=np.float64))
    top = float(np.percentile(magnitude, 99)) or float(magnitude.max())
    return OverlayScale(low=-top, high=top)


def _scale_strip(width: int, scale: OverlayScale) -> np.ndarray:
    """A ramp bar across ``width`` with the end values written on it."""
    ramp = diverging_colours(np.linspace(-1.0, 1.0, width))
    bar = np.repeat(ramp[None], _SCALE_HEIGHT, axis=0)
    canvas = Image.fromarray(bar)
    draw = ImageDraw.Draw(canvas)
    low, high = f"{scale.low:.3g}", f"{scale.high:.3g}"
    draw.text((4, 7), low, fill=(255, 255, 255))
    draw.text((width // 2 - 3, 7), "0", fill=_INK)
    draw.text((width - 4 - int(draw.textlength(high)), 7), high, fill=(255, 255, 255))
    return np.asarray(canvas)


def _up(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr if factor == 1 else np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def _check(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    img, h = np.asarray(image), np.asarray(heatmap)
    if h.ndim != 2 or h.size == 0 or not np.all(np.isfinite(h)):
        raise ExplainError("explain.bad_heatmap", f"a heatmap must be finite (H, W), got {h.shape}")
    if img.dtype != np.uint8 or img.shape != (*h.shape, 3):
        raise ExplainError(
            "explain.bad_images",
            f"expected a uint8 image of shape {(*h.shape, 3)}, got {img.dtype} {img.shape}",
        )
    return img
