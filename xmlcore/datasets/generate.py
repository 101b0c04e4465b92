"""``generate_dishes``: seeded procedural dish photos with ingredient labels and masks.

Four independent random streams are spawned from the seed (hierarchy, recipes, scene
choices, pixels), so the same seed always gives byte-identical images and labels, and
changing how pixels are drawn never changes the label sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmlcore.datasets.presets import DatasetPreset, resolve_preset
from xmlcore.datasets.primitives import Primitive, enumerate_primitives
from xmlcore.datasets.recipes import RecipeBook, sample_recipe_book
from xmlcore.datasets.scenes import RIM_COLOURS, render_scene
from xmlcore.errors import ConfigError
from xmlcore.labels import LabelSpace


@dataclass(frozen=True, eq=False)
class GeneratedDataset:
    """A generated data set: pixels, labels and the ground truth behind them.

    - ``images``: uint8 ``(n, H, W, 3)``; row ``i`` is ``label_space.image_keys[i]``.
    - ``label_space``: the 0/1 label matrix, vocabulary sorted by name.
    - ``masks[i]``: visible label -> bool ``(H, W)``, where it can be seen after occlusion
      (never empty); invisible labels (``label_space`` minus ``visual_labels``) have none.
    - ``label_groups`` / ``label_cuisines``: every label -> its dish type / cuisine (see
      ``xmlcore.datasets.recipes`` for labels shared by several; ``"pantry"`` for staples).
    - ``looks``: visible label -> its primitive, e.g. ``"dotted red circle"``.
    - ``dish_types[i]``: the dish type image ``i`` was drawn from; ``dish_cuisines`` maps
      dish types to cuisines.
    - ``has_plate`` ``(n,)`` bool and ``plate_masks`` ``(n, H, W)`` bool: the label-free
      distractor (visible pixels only).
    """

    images: np.ndarray
    label_space: LabelSpace
    masks: list[dict[str, np.ndarray]]
    label_groups: dict[str, str]
    label_cuisines: dict[str, str]
    visual_labels: frozenset[str]
    looks: dict[str, str]
    dish_types: tuple[str, ...]
    dish_cuisines: dict[str, str]
    has_plate: np.ndarray
    plate_masks: np.ndarray
    preset: str
    seed: int
    config: DatasetPreset

    @property
    def image_keys(self) -> tuple[str, ...]:
        return self.label_space.image_keys

    @property
    def n_images(self) -> int:
        return self.label_space.n_images

    def label_sets(self) -> list[list[str]]:
        """Per image, its label names in vocabulary order."""
        return [self.label_space.labels_of(i) for i in range(self.n_images)]


def _streams(seed: int) -> list[np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("config.invalid_seed", f"seed must be a non-negative int, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def sample_recipes(
    preset: str | DatasetPreset = "small", *, seed: int = 0, **overrides: object
) -> RecipeBook:
    """The label side of ``generate_dishes`` alone (same seed, same label sets), no pixels.

    Cheap even at the ``paper`` scale; use it when only labels and groups are needed.
    """
    config = resolve_preset(preset, overrides)
    hierarchy_rng, recipe_rng, _, _ = _streams(seed)
    return sample_recipe_book(config, hierarchy_rng, recipe_rng)


def generate_dishes(
    preset: str | DatasetPreset = "small", *, seed: int = 0, **overrides: object
) -> GeneratedDataset:
    """Generate the ``preset`` data set (``"tiny"``, ``"small"``, ``"paper"``).

    ``overrides`` replace any ``DatasetPreset`` field, e.g. ``n_images=40, image_size=32``.
    Raises ``ConfigError`` for an unknown preset or field, or an impossible combination.
    """
    config = resolve_preset(preset, overrides)
    hierarchy_rng, recipe_rng, scene_rng, pixel_rng = _streams(seed)
    book = sample_recipe_book(config, hierarchy_rng, recipe_rng)
    visible_ids = np.flatnonzero(book.visible)
    primitives = enumerate_primitives(visible_ids.size)
    looks = {
        int(j): primitives[k]
        for j, k in zip(visible_ids, scene_rng.permutation(visible_ids.size), strict=True)
    }
    has_plate = _plate_flags(book, config.plate_probability, scene_rng)
    images, masks, plate_masks = _render_all(book, looks, has_plate, config, pixel_rng)
    keys = tuple(f"dish_{i:05d}.png" for i in range(1, config.n_images + 1))
    label_space = LabelSpace.from_label_sets(keys, book.label_sets(), sorted(book.labels))
    return GeneratedDataset(
        images=images,
        label_space=label_space,
        masks=masks,
        label_groups=book.label_groups,
        label_cuisines=book.label_cuisines,
        visual_labels=book.visual_labels,
        looks={book.labels[j]: str(prim) for j, prim in looks.items()},
        dish_types=book.image_dish_types,
        dish_cuisines=book.dish_cuisines,
        has_plate=has_plate,
        plate_masks=plate_masks,
        preset=preset if isinstance(preset, str) else "custom",
        seed=int(seed),
        config=config,
    )


def _render_all(
    book: RecipeBook,
    looks: dict[int, Primitive],
    has_plate: np.ndarray,
    config: DatasetPreset,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]:
    """Images, per-image label masks and plate masks; ingredients drawn in random order."""
    size, n = config.image_size, config.n_images
    rims = _rim_of_dish(book)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    plate_masks = np.empty((n, size, size), dtype=bool)
    masks: list[dict[str, np.ndarray]] = []
    for i in range(n):
        shown = rng.permutation(np.flatnonzero(book.membership[i] & book.visible))
        images[i], parts, plate_masks[i] = render_scene(
            [looks[int(j)] for j in shown],
            size=size,
            plate_rim=rims[book.dish_of_image[i]] if has_plate[i] else None,
            scale=(config.min_object_scale, config.max_object_scale),
            rng=rng,
        )
        masks.append({book.labels[j]: part for j, part in zip(shown, parts, strict=True)})
    return images, masks, plate_masks


def _plate_flags(book: RecipeBook, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Plates in ``probability`` of images on average, a little more or less per dish type."""
    jitter = rng.normal(0.0, 0.4 * probability * (1 - probability), len(book.dish_names))
    per_dish = np.clip(probability + jitter, 0.0, 1.0)
    return rng.random(book.dish_of_image.size) < per_dish[book.dish_of_image]


def _rim_of_dish(book: RecipeBook) -> list[tuple[int, int, int]]:
    """One rim colour per cuisine: the spurious plate cue the paper warns about."""
    cuisines = sorted(set(book.dish_cuisines.values()))
    return [
        RIM_COLOURS[cuisines.index(book.dish_cuisines[d]) % len(RIM_COLOURS)]
        for d in book.dish_names
    ]
