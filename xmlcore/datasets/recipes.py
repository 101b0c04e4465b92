"""The recipe book: a label hierarchy (cuisine -> dish type -> ingredient group) and the
label sets sampled from it, before any pixel is drawn.

Label roles:

- pantry staples (invisible, the first half of ``n_invisible``): in dishes of every
  cuisine, at a rate decaying down the list (salt is the most common label of all);
- seasonings (invisible, the rest): tied to one cuisine, in each of its dish types;
- cuisine staples (visible, ``staples_per_cuisine`` per cuisine): in each dish type of
  their cuisine with ``staple_probability``;
- group labels (visible, all the rest): dealt round-robin to the dish types, so each
  belongs to exactly one group. Rank ``r`` in the group: the first ``core_size`` are the
  core (``core_probability``); later ones decay as ``tail_probability * (r-core+1)**-s``.

A recipe draws its dish type from a Zipf popularity, every label with its dish type's
probability, plus Poisson(``extra_labels_mean``) extras from a global Zipf over the
visible labels: frequencies get a head (pantry, core of popular dishes) and a long tail
(late group ranks of rare dishes, extras of low Zipf rank). The visible count is then
clipped to [min_visible, max_visible] and, as far as the image count allows, every label
is made to occur at least once (a real vocabulary only lists ingredients that occur).

Ground-truth grouping (``label_groups``, what hierarchy recovery is scored against):
group labels -> their dish type; cuisine staples and seasonings, which belong to several
dish types, -> the most popular dish type of their cuisine (where they occur most);
pantry staples -> the pseudo-group ``"pantry"``. ``label_cuisines`` is the level above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmlcore.datasets.presets import DatasetPreset
from xmlcore.datasets.vocabulary import (
    CUISINE_WORDS,
    PANTRY_WORDS,
    SEASONING_WORDS,
    VISIBLE_WORDS,
    dish_type_names,
    names,
)

PANTRY = "pantry"
# Rate of the commonest pantry staple (salt) and its decay down the list.
PANTRY_TOP_RATE = 0.65
PANTRY_DECAY = 0.6


@dataclass(frozen=True, eq=False)
class RecipeBook:
    """Hierarchy plus sampled label sets; label arrays are in the internal order ``labels``."""

    labels: tuple[str, ...]
    visible: np.ndarray  # (p,) bool
    label_groups: dict[str, str]
    label_cuisines: dict[str, str]
    dish_cuisines: dict[str, str]  # dish type -> cuisine
    dish_names: tuple[str, ...]
    dish_of_image: np.ndarray  # (n,) int, index into dish_names
    membership: np.ndarray  # (n, p) bool

    @property
    def visual_labels(self) -> frozenset[str]:
        return frozenset(np.asarray(self.labels, dtype=object)[self.visible].tolist())

    @property
    def image_dish_types(self) -> tuple[str, ...]:
        return tuple(self.dish_names[d] for d in self.dish_of_image)

    def label_sets(self) -> list[list[str]]:
        """Per image, its labels (internal order)."""
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in self.membership]


@dataclass(frozen=True, eq=False)
class _Hierarchy:
    labels: list[str]
    cuisines: list[str]
    dish_names: list[str]
    cuisine_of_dish: np.ndarray  # (D,)
    popularity: np.ndarray  # (D,) sums to 1
    probs: np.ndarray  # (D, p) inclusion probability of each label per dish type
    extra_weights: np.ndarray  # (p,) global Zipf over visible labels, sums to 1
    visible: np.ndarray  # (p,) bool
    home_dish: np.ndarray  # (p,) main dish type, -1 for pantry staples
    home_cuisine: np.ndarray  # (p,) -1 for pantry staples
    groups: list[np.ndarray]  # per dish type, its group labels in rank order


def _zipf(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


def build_hierarchy(c: DatasetPreset, rng: np.random.Generator) -> _Hierarchy:
    D, C, p = c.n_dish_types, c.n_cuisines, c.n_labels
    cuisines = names(CUISINE_WORDS, C, "cuisine")
    cuisine_of_dish = np.arange(D) % C
    popularity = rng.permutation(_zipf(D, c.dish_zipf_exponent))
    # Where a label shared by a whole cuisine occurs most: its most popular dish type.
    main_dish = [int(np.argmax(np.where(cuisine_of_dish == k, popularity, -1))) for k in range(C)]

    n_pantry = (c.n_invisible + 1) // 2
    probs, home_dish, home_cuisine, groups = _label_roles(c, n_pantry, cuisine_of_dish, main_dish)

    visible = np.arange(p) >= c.n_invisible
    extra_weights = np.zeros(p)
    extra_weights[rng.permutation(np.flatnonzero(visible))] = _zipf(c.n_visible, c.zipf_exponent)
    labels = (
        names(PANTRY_WORDS, n_pantry, "staple")
        + names(SEASONING_WORDS, c.n_invisible - n_pantry, "seasoning")
        + [str(w) for w in rng.permutation(names(VISIBLE_WORDS, c.n_visible, "ingredient"))]
    )
    return _Hierarchy(
        labels=labels,
        cuisines=cuisines,
        dish_names=dish_type_names(cuisines, cuisine_of_dish.tolist()),
        cuisine_of_dish=cuisine_of_dish,
        popularity=popularity,
        probs=probs,
        extra_weights=extra_weights,
        visible=visible,
        home_dish=home_dish,
        home_cuisine=home_cuisine,
        groups=groups,
    )


def _label_roles(
    c: DatasetPreset, n_pantry: int, cuisine_of_dish: np.ndarray, main_dish: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Inclusion probabilities (D, p), home dish type and cuisine per label, the groups."""
    D, C, p = c.n_dish_types, c.n_cuisines, c.n_labels
    probs = np.zeros((D, p))
    home_dish = np.full(p, -1)
    home_cuisine = np.full(p, -1)
    probs[:, :n_pantry] = PANTRY_TOP_RATE * np.arange(1, n_pantry + 1) ** -PANTRY_DECAY
    # Seasonings, then cuisine staples: each block dealt round-robin over the cuisines.
    n_staples = C * c.staples_per_cuisine
    for label in range(n_pantry, c.n_invisible + n_staples):
        k = (label - n_pantry if label < c.n_invisible else label - c.n_invisible) % C
        probs[cuisine_of_dish == k, label] = c.staple_probability
        home_cuisine[label], home_dish[label] = k, main_dish[k]
    g = np.arange(c.n_group_labels)
    group_labels = c.n_invisible + n_staples + g
    rank = g // D
    decay = c.tail_probability * np.maximum(rank - c.core_size + 1, 1) ** -c.zipf_exponent
    probs[g % D, group_labels] = np.where(rank < c.core_size, c.core_probability, decay)
    home_dish[group_labels] = g % D
    home_cuisine[group_labels] = cuisine_of_dish[g % D]
    return probs, home_dish, home_cuisine, [group_labels[g % D == d] for d in range(D)]


def sample_recipe_book(
    c: DatasetPreset, hierarchy_rng: np.random.Generator, recipe_rng: np.random.Generator
) -> RecipeBook:
    """Build the hierarchy, then draw ``c.n_images`` recipes from it."""
    h = build_hierarchy(c, hierarchy_rng)
    dish, member = _sample_membership(h, c, recipe_rng)

    def group_name(label: int) -> str:
        return PANTRY if h.home_dish[label] < 0 else h.dish_names[h.home_dish[label]]

    def cuisine_name(label: int) -> str:
        return PANTRY if h.home_cuisine[label] < 0 else h.cuisines[h.home_cuisine[label]]

    return RecipeBook(
        labels=tuple(h.labels),
        visible=h.visible,
        label_groups={name: group_name(j) for j, name in enumerate(h.labels)},
        label_cuisines={name: cuisine_name(j) for j, name in enumerate(h.labels)},
        dish_cuisines={
            d: h.cuisines[k] for d, k in zip(h.dish_names, h.cuisine_of_dish, strict=True)
        },
        dish_names=tuple(h.dish_names),
        dish_of_image=dish,
        membership=member,
    )


def _sample_membership(
    h: _Hierarchy, c: DatasetPreset, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n, p = c.n_images, len(h.labels)
    dish = rng.choice(len(h.dish_names), size=n, p=h.popularity)
    member = rng.random((n, p)) < h.probs[dish]
    rows = np.repeat(np.arange(n), rng.poisson(c.extra_labels_mean, size=n))
    member[rows, rng.choice(p, size=rows.size, p=h.extra_weights)] = True
    for i in range(n):
        _clip_visible(member[i], h.groups[dish[i]], h.visible, c, rng)
    _cover_every_label(member, dish, h, c, rng)
    return dish, member


def _clip_visible(
    row: np.ndarray,
    group: np.ndarray,
    visible: np.ndarray,
    c: DatasetPreset,
    rng: np.random.Generator,
) -> None:
    """Keep a drawable number of visible ingredients; tops up from the dish's core first."""
    shown = np.flatnonzero(row & visible)
    if shown.size > c.max_visible:
        row[rng.choice(shown, shown.size - c.max_visible, replace=False)] = False
    elif shown.size < c.min_visible:
        row[group[~row[group]][: c.min_visible - shown.size]] = True


def _cover_every_label(
    member: np.ndarray, dish: np.ndarray, h: _Hierarchy, c: DatasetPreset, rng: np.random.Generator
) -> None:
    """Give each never-drawn label one recipe of its own dish type (or cuisine)."""
    counts = member.sum(axis=0)
    group_label = np.zeros(len(h.labels), dtype=bool)
    for g in h.groups:
        group_label[g] = True
    for label in np.flatnonzero(counts == 0):
        if group_label[label]:
            rows = np.flatnonzero(dish == h.home_dish[label])
        elif h.home_cuisine[label] >= 0:
            rows = np.flatnonzero(h.cuisine_of_dish[dish] == h.home_cuisine[label])
        else:
            rows = np.arange(len(dish))
        if rows.size == 0:
            rows = np.arange(len(dish))
        for i in rng.permutation(rows):
            if _add_label(member[i], counts, int(label), h.visible, c.max_visible, rng):
                break


def _add_label(
    row: np.ndarray,
    counts: np.ndarray,
    label: int,
    visible: np.ndarray,
    max_visible: int,
    rng: np.random.Generator,
) -> bool:
    """Add ``label`` to a recipe, evicting a visible label that occurs elsewhere if full."""
    shown = np.flatnonzero(row & visible)
    if visible[label] and shown.size >= max_visible:
        spare = shown[counts[shown] > 1]
        if spare.size == 0:
            return False
        evicted = rng.choice(spare)
        row[evicted] = False
        counts[evicted] -= 1
    row[label] = True
    counts[label] += 1
    return True
