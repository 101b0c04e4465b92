"""Visual ingredient primitives: shape x colour x texture, drawn from coordinate grids.

Every shape fits in the unit disc of its local frame (so objects of radius ``r`` whose
centres are ``2r`` apart never touch). Textures are given in pixels, not in local units,
so their period stays resolvable whatever the object's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xmlcore.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 210, 30),
    "lime": (150, 220, 40),
    "green": (30, 130, 50),
    "teal": (20, 150, 140),
    "cyan": (70, 200, 235),
    "blue": (31, 80, 200),
    "navy": (25, 30, 110),
    "purple": (130, 60, 180),
    "magenta": (220, 40, 170),
    "pink": (250, 150, 190),
    "brown": (120, 70, 30),
    "olive": (120, 120, 20),
    "maroon": (120, 20, 40),
    "charcoal": (40, 40, 40),
}
TEXTURES = ("solid", "dotted", "striped", "checker", "speckled")

ShapeFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
_SHAPES: dict[str, ShapeFn] = {
    "circle": lambda u, v, rho, phi, ph: rho <= 1.0,
    "square": lambda u, v, rho, phi, ph: np.maximum(abs(u), abs(v)) <= 0.7,
    "triangle": lambda u, v, rho, phi, ph: (v <= 0.5) & (v >= 2.0 * abs(u) - 1.0),
    "ring": lambda u, v, rho, phi, ph: (rho <= 1.0) & (rho >= 0.55),
    "stripe": lambda u, v, rho, phi, ph: (abs(u) <= 0.95) & (abs(v) <= 0.3),
    "blob": lambda u, v, rho, phi, ph: (
        rho <= 0.72 + 0.16 * np.sin(3 * phi + ph) + 0.1 * np.sin(5 * phi + 2 * ph)
    ),
    "cross": lambda u, v, rho, phi, ph: (
        ((abs(u) <= 0.95) & (abs(v) <= 0.28)) | ((abs(v) <= 0.95) & (abs(u) <= 0.28))
    ),
    "diamond": lambda u, v, rho, phi, ph: abs(u) + abs(v) <= 1.0,
    "crescent": lambda u, v, rho, phi, ph: (rho <= 1.0) & (np.hypot(u - 0.45, v) > 0.72),
    "star": lambda u, v, rho, phi, ph: rho <= 0.55 + 0.4 * np.cos(5 * phi + ph),
}
SHAPES = tuple(_SHAPES)


@dataclass(frozen=True)
class Primitive:
    """How one ingredient looks: e.g. ``dotted red circle``."""

    shape: str
    colour: str
    texture: str

    def __str__(self) -> str:
        return f"{self.texture} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Placement:
    """Where one object goes: centre (pixels), radius (pixels), rotation and shape phase."""

    cy: float
    cx: float
    radius: float
    angle: float
    phase: float


def enumerate_primitives(n: int) -> list[Primitive]:
    """``n`` distinct primitives, most distinct first.

    The first ``len(SHAPES) * len(COLOURS)`` differ in their (shape, colour) pair; after
    that the pairs repeat with another texture. Textures vary along the way too.
    """
    S, C, T = len(SHAPES), len(COLOURS), len(TEXTURES)
    if n > S * C * T:
        raise ConfigError(
            "config.invalid_dataset", f"at most {S * C * T} visible labels have a distinct look"
        )
    colours = list(COLOURS)
    out = []
    for i in range(n):
        block, j = divmod(i, S * C)
        q, r = divmod(j, S)
        # gcd(S + 1, C) == 1 makes (r, (S+1)q + r mod C) a bijection over the first block.
        colour = colours[(q * (S + 1) + r) % C]
        out.append(Primitive(SHAPES[r], colour, TEXTURES[(q + r + block) % T]))
    return out


def local_frame(
    p: Placement, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotated pixel offsets ``(pu, pv)`` from the centre and their length over the radius."""
    dy, dx = yy - p.cy, xx - p.cx
    cos, sin = np.cos(p.angle), np.sin(p.angle)
    pu, pv = dx * cos + dy * sin, dy * cos - dx * sin
    return pu, pv, np.hypot(pu, pv) / p.radius


def shape_mask(shape: str, p: Placement, pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels the shape covers."""
    u, v = pu / p.radius, pv / p.radius
    return _SHAPES[shape](u, v, np.hypot(u, v), np.arctan2(v, u), p.phase)


def paint(
    canvas: np.ndarray,
    prim: Primitive,
    mask: np.ndarray,
    frame: tuple[np.ndarray, np.ndarray, np.ndarray],
    period: float,
    rng: np.random.Generator,
) -> None:
    """Fill ``mask`` of the float (H, W, 3) canvas with the textured, shaded colour."""
    pu, pv, rho = frame
    base = np.clip(np.asarray(COLOURS[prim.colour], np.float32) + rng.normal(0, 8, 3), 0, 255)
    luminance = float(base @ np.array([0.299, 0.587, 0.114]))
    accent_colour = base * 0.45 if luminance > 90 else base + (255 - base) * 0.55
    accent = _texture(prim.texture, pu, pv, period, rng)
    rgb = np.where(accent[..., None], accent_colour, base)
    rgb = rgb * (1.0 - 0.18 * np.minimum(rho, 1.0))[..., None]
    canvas[mask] = rgb[mask]


def _texture(
    texture: str, pu: np.ndarray, pv: np.ndarray, period: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool (H, W): pixels in the accent tone."""
    if texture == "solid":
        return np.zeros(pu.shape, dtype=bool)
    if texture == "dotted":
        du, dv = pu % period - period / 2, pv % period - period / 2
        return du * du + dv * dv <= (0.32 * period) ** 2
    if texture == "striped":
        return pu % period < period / 2
    if texture == "checker":
        return (np.floor(pu / period) + np.floor(pv / period)) % 2 == 1
    return rng.random(pu.shape) < 0.35
