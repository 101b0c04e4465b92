"""Scenes of real handwritten digits: several of scikit-learn's 8x8 digits on one canvas.

The dishes generator is procedural; this one is real data (the UCI handwritten digits
bundled with scikit-learn: 1,797 scans, no download). Each scene puts 1-3 digits of
distinct classes on a dark canvas, each upscaled and dropped at a jittered place in its
own cell of a 2x2 grid, so digits never overlap. Labels: the 10 digit classes
(``digit_0`` .. ``digit_9``) plus 4 group labels that hold when ANY digit drawn is in
the group: ``even``, ``odd``, ``small`` (0-4) and ``large`` (5-9). A small vocabulary
(14 labels) with structure among the labels: the case where a code chosen by halving
(7, 3) was too narrow to decode (issue 12).

Held-out digits: every class's scans are split once (fixed seed, 2/3 and 1/3) into a
training and a held-out pool; the last ``held_out_rows`` scenes use the held-out pool
only, so test scenes show handwriting no training scene contains.

    ds = generate_digit_scenes("digits", seed=0, held_out_rows=300)
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.labels import LabelSpace

DIGIT_LABELS = tuple(f"digit_{d}" for d in range(10))
GROUPS: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "odd": frozenset({1, 3, 5, 7, 9}),
    "small": frozenset({0, 1, 2, 3, 4}),
    "large": frozenset({5, 6, 7, 8, 9}),
}
_POOL_SEED = 20240614  # fixed: the train / held-out split of the scans never moves
_GRID = 2  # cells per side; one digit per cell, so at most 4 digits and no overlap


@dataclass(frozen=True)
class DigitScenePreset:
    """Every knob of ``generate_digit_scenes``; each can be overridden by keyword."""

    n_images: int = 1500
    image_size: int = 48
    digit_scale: int = 2  # each 8x8 scan becomes (8 * scale) px square
    min_digits: int = 1
    max_digits: int = 3


DIGIT_PRESETS: dict[str, DigitScenePreset] = {"digits": DigitScenePreset()}


@dataclass(frozen=True, eq=False)
class DigitScenes:
    """Generated digit scenes and the ground truth behind them.

    - ``images``: uint8 ``(n, S, S, 3)`` (grey: the three channels are equal).
    - ``label_space``: 0/1 labels, vocabulary sorted by name (14 labels).
    - ``digits[i]``: the digit classes drawn in scene ``i``; ``sources[i]`` the index of
      each one's scan in ``sklearn.datasets.load_digits()``; ``corners[i]`` the (row,
      column) of each one's top-left pixel.
    - ``label_groups``: label -> its group (``"even"``/``"odd"`` for digits by parity,
      ``"group"`` for the four group labels), for hierarchy checks.
    """

    images: np.ndarray
    label_space: LabelSpace
    digits: tuple[tuple[int, ...], ...]
    sources: tuple[tuple[int, ...], ...]
    corners: tuple[tuple[tuple[int, int], ...], ...]
    label_groups: dict[str, str]
    held_out_rows: int
    seed: int
    config: DigitScenePreset


def scene_labels(digits: tuple[int, ...] | list[int]) -> list[str]:
    """The label names of a scene showing ``digits`` (digit classes and groups)."""
    names = [DIGIT_LABELS[d] for d in digits]
    names += [group for group, members in GROUPS.items() if members.intersection(digits)]
    return sorted(names)


@functools.lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    images.flags.writeable = False
    return images, np.asarray(bunch.target, dtype=np.int64)


def digit_pools() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, the scan indices of the training pool and of the held-out pool."""
    _, target = _scans()
    rng = np.random.default_rng(_POOL_SEED)
    train, held = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(target == d))
        cut = (2 * idx.size) // 3
        train.append(np.sort(idx[:cut]))
        held.append(np.sort(idx[cut:]))
    return train, held


def generate_digit_scenes(
    preset: str | DigitScenePreset = "digits",
    *,
    seed: int = 0,
    held_out_rows: int = 0,
    **overrides: object,
) -> DigitScenes:
    """``n_images`` scenes; the last ``held_out_rows`` from held-out scans. Same seed and
    settings, byte-identical result. ``ConfigError`` for a bad preset or setting."""
    config = _resolve(preset, overrides)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("config.invalid_seed", f"seed must be a non-negative int, got {seed!r}")
    if not 0 <= held_out_rows <= config.n_images:
        raise ConfigError("config.invalid_dataset", "held_out_rows must be in [0, n_images]")
    rng = np.random.default_rng(int(seed))
    scans, _ = _scans()
    pools = digit_pools()
    n, size = config.n_images, config.image_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    digits, sources, corners = [], [], []
    for i in range(n):
        pool = pools[1] if i >= n - held_out_rows else pools[0]
        drawn, used, placed = _draw_scene(images[i], scans, pool, config, rng)
        digits.append(drawn)
        sources.append(used)
        corners.append(placed)
    keys = tuple(f"digits_{i:05d}.png" for i in range(1, n + 1))
    vocabulary = sorted((*DIGIT_LABELS, *GROUPS))
    space = LabelSpace.from_label_sets(keys, [scene_labels(d) for d in digits], vocabulary)
    groups = {DIGIT_LABELS[d]: "even" if d % 2 == 0 else "odd" for d in range(10)}
    groups.update(dict.fromkeys(GROUPS, "group"))
    return DigitScenes(
        images=images, label_space=space, digits=tuple(digits), sources=tuple(sources),
        corners=tuple(corners), label_groups=groups, held_out_rows=held_out_rows,
        seed=int(seed), config=config,
    )  # fmt: skip


def _draw_scene(
    canvas: np.ndarray,
    scans: np.ndarray,
    pool: list[np.ndarray],
    config: DigitScenePreset,
    rng: np.random.Generator,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Paint 1-3 digits of distinct classes into ``canvas`` (in place)."""
    count = int(rng.integers(config.min_digits, config.max_digits + 1))
    classes = rng.choice(10, size=count, replace=False)
    cells = rng.choice(_GRID * _GRID, size=count, replace=False)
    cell, side = config.image_size // _GRID, 8 * config.digit_scale
    used, placed = [], []
    for d, c in zip(classes, cells, strict=True):
        src = int(rng.choice(pool[int(d)]))
        top = (c // _GRID) * cell + int(rng.integers(0, cell - side + 1))
        left = (c % _GRID) * cell + int(rng.integers(0, cell - side + 1))
        ink = np.kron(scans[src], np.ones((config.digit_scale, config.digit_scale)))
        canvas[top : top + side, left : left + side] = (ink * (255.0 / 16.0)).round()[..., None]
        used.append(src)
        placed.append((top, left))
    return tuple(int(d) for d in classes), tuple(used), tuple(placed)


def _resolve(preset: str | DigitScenePreset, overrides: dict[str, object]) -> DigitScenePreset:
    if isinstance(preset, DigitScenePreset):
        base = preset
    elif preset in DIGIT_PRESETS:
        base = DIGIT_PRESETS[preset]
    else:
        raise ConfigError(
            "config.unknown_preset",
            f"unknown preset {preset!r}; choose from {sorted(DIGIT_PRESETS)}",
        )
    fields = {f.name for f in dataclasses.fields(DigitScenePreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError("config.unknown_parameter", f"unknown dataset parameter(s) {unknown}")
    c = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    ints = (c.n_images, c.image_size, c.digit_scale, c.min_digits, c.max_digits)
    ok = all(isinstance(v, int) and v >= 1 for v in ints)
    ok = ok and c.min_digits <= c.max_digits <= _GRID * _GRID
    if not ok or 8 * c.digit_scale > c.image_size // _GRID:
        raise ConfigError(
            "config.invalid_dataset",
            "need positive ints, 1 <= min_digits <= max_digits <= 4 and "
            f"8 * digit_scale <= image_size / {_GRID}",
        )
    return c
