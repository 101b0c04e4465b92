"""One dish photo: table background, an optional plate, ingredients on top.

The plate is the paper's "plate problem": a large, salient object that carries no label.
Its rim colour is fixed per cuisine, so a model can learn a plate detector that predicts
cuisine-level labels; explanations should show whether it did (``plate_mask``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from xmlcore.datasets.primitives import Placement, Primitive, local_frame, paint, shape_mask

TABLE_COLOURS = ((176, 146, 110), (104, 76, 56), (94, 100, 106), (208, 200, 184), (140, 152, 140))
RIM_COLOURS = (
    (52, 86, 160),
    (168, 50, 46),
    (46, 120, 76),
    (196, 156, 48),
    (96, 96, 100),
    (120, 66, 140),
    (40, 140, 150),
    (200, 110, 40),
)
PLATE_WHITE = np.array([238.0, 236.0, 230.0], dtype=np.float32)
_MAX_LAYOUT_TRIES = 8


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def render_scene(
    prims: list[Primitive],
    *,
    size: int,
    plate_rim: tuple[int, int, int] | None,
    scale: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Draw one image of ``prims`` (at least one), later ones on top of earlier ones.

    Returns the uint8 (size, size, 3) image, per primitive the bool mask of the pixels
    where it is visible (after occlusion; never empty), and the visible plate pixels.
    ``plate_rim=None`` draws no plate.
    """
    yy, xx = _grid(size)
    canvas = _background(size, yy, xx, rng)
    plate = np.zeros((size, size), dtype=bool)
    centre, extent = (size / 2, size / 2), (0.5 * size, 0.5 * size, 0.0)
    if plate_rim is not None:
        plate, centre, extent = _draw_plate(canvas, yy, xx, plate_rim, rng)
    objects, visible = _layout(prims, size, centre, extent, scale, rng)
    period = max(3.0, size / 12)
    for prim, obj in zip(prims, objects, strict=True):
        paint(canvas[obj.box], prim, obj.shape[obj.box], obj.frame, period, rng)
    covered = np.logical_or.reduce([obj.shape for obj in objects])
    canvas += rng.normal(0.0, 2.5, canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return image, visible, plate & ~covered


def _background(size: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(TABLE_COLOURS[rng.integers(len(TABLE_COLOURS))], np.float32)
    base = base + rng.normal(0, 10, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((xx * math.cos(theta) + yy * math.sin(theta)) / size - 0.5) * rng.uniform(-40, 40)
    noise = rng.normal(0, 5, (size, size, 3)).astype(np.float32)
    return (base + ramp[..., None] + noise).astype(np.float32)


def _draw_plate(
    canvas: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rim: tuple[int, int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float, float]]:
    """An ellipse with a coloured rim; returns its mask, centre and (a, b, angle)."""
    size = canvas.shape[0]
    cy, cx = size / 2 + rng.normal(0, 0.04 * size, 2)
    a = size * rng.uniform(0.40, 0.48)
    b = a * rng.uniform(0.82, 1.0)
    angle = rng.uniform(0, math.pi)
    pu, pv, _ = local_frame(Placement(cy, cx, 1.0, angle, 0.0), yy, xx)
    e = np.sqrt((pu / a) ** 2 + (pv / b) ** 2)
    plate = e <= 1.0
    shade = (1.0 - 0.08 * e)[..., None]
    canvas[plate] = (PLATE_WHITE * shade)[plate]
    rim_band = plate & (e >= 0.8)
    rim_rgb = 0.75 * np.asarray(rim, np.float32) + 0.25 * PLATE_WHITE
    canvas[rim_band] = rim_rgb
    canvas[plate & (e >= 0.76) & (e < 0.8)] = PLATE_WHITE * 0.8
    return plate, (float(cy), float(cx)), (a, b, angle)


def _layout(
    prims: list[Primitive],
    size: int,
    centre: tuple[float, float],
    extent: tuple[float, float, float],
    scale: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[list[_Object], list[np.ndarray]]:
    """Objects placed at random around ``centre``, and their visible parts.

    Objects may overlap; a layout is redrawn (smaller each time) when one of them would
    be mostly hidden, and after a few tries objects go on a grid where none overlap.
    """
    min_pixels = max(4, size * size // 256)
    for attempt in range(_MAX_LAYOUT_TRIES):
        shrink = 0.92**attempt
        placements = [_random_placement(size, centre, extent, scale, shrink, rng) for _ in prims]
        objects = _objects(prims, placements, size)
        parts = _visible_parts([obj.shape for obj in objects])
        if all(
            part.sum() >= max(min_pixels, 0.4 * obj.shape.sum())
            for part, obj in zip(parts, objects, strict=True)
        ):
            return objects, parts
    objects = _objects(prims, _grid_placements(len(prims), size, rng), size)
    return objects, [obj.shape for obj in objects]


@dataclass(frozen=True, eq=False)
class _Object:
    """A placed shape: its full-size mask, and its bounding box with the local frame there."""

    shape: np.ndarray
    box: tuple[slice, slice]
    frame: tuple[np.ndarray, np.ndarray, np.ndarray]


def _objects(prims: list[Primitive], placements: list[Placement], size: int) -> list[_Object]:
    # Shapes fit in their unit disc: working in the bounding box alone is exact and cheap.
    yy, xx = _grid(size)
    out = []
    for prim, p in zip(prims, placements, strict=True):
        r = p.radius + 1.0
        box = (
            slice(max(0, int(p.cy - r)), min(size, math.ceil(p.cy + r))),
            slice(max(0, int(p.cx - r)), min(size, math.ceil(p.cx + r))),
        )
        frame = local_frame(p, yy[box], xx[box])
        shape = np.zeros((size, size), dtype=bool)
        shape[box] = shape_mask(prim.shape, p, frame[0], frame[1])
        out.append(_Object(shape, box, frame))
    return out


def _random_placement(
    size: int,
    centre: tuple[float, float],
    extent: tuple[float, float, float],
    scale: tuple[float, float],
    shrink: float,
    rng: np.random.Generator,
) -> Placement:
    radius = size * rng.uniform(*scale) * shrink
    a, b, angle = extent
    t, s = rng.uniform(0, 2 * math.pi), 0.6 * math.sqrt(rng.uniform())
    du, dv = s * a * math.cos(t), s * b * math.sin(t)
    cy = centre[0] + du * math.sin(angle) + dv * math.cos(angle)
    cx = centre[1] + du * math.cos(angle) - dv * math.sin(angle)
    cy, cx = (float(np.clip(c, radius, size - radius)) for c in (cy, cx))
    return Placement(cy, cx, radius, rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))


def _grid_placements(n: int, size: int, rng: np.random.Generator) -> list[Placement]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ch, cw = size / rows, size / cols
    cells = rng.permutation(rows * cols)[:n]
    radius = 0.45 * min(ch, cw)
    return [
        Placement(
            (c // cols + 0.5) * ch,
            (c % cols + 0.5) * cw,
            radius,
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0, 2 * math.pi),
        )
        for c in cells
    ]


def _visible_parts(shapes: list[np.ndarray]) -> list[np.ndarray]:
    """Each shape minus everything drawn after it (later objects lie on top)."""
    parts: list[np.ndarray] = []
    covered = np.zeros_like(shapes[0])
    for mask in reversed(shapes):
        parts.append(mask & ~covered)
        covered |= mask
    return parts[::-1]
