"""Size and shape presets for the procedural dishes data set.

A preset fixes every knob of the generator; ``resolve_preset`` applies keyword
overrides and validates the result, so a bad combination fails before any sampling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xmlcore.errors import ConfigError


@dataclass(frozen=True)
class DatasetPreset:
    """Every knob of ``generate_dishes``; each field can be overridden by keyword.

    Label roles: ``n_invisible`` labels have no visual form (salt-like, co-occurrence
    only); ``staples_per_cuisine`` visible labels per cuisine are shared by all of its
    dish types; the remaining visible labels are split into one group per dish type.
    """

    n_images: int
    n_labels: int
    n_dish_types: int
    n_cuisines: int
    image_size: int = 64
    n_invisible: int = 5
    staples_per_cuisine: int = 1
    # Zipf exponent of the global "extra ingredient" draw and of the within-group decay:
    # together they give the label frequencies a head and a long tail.
    zipf_exponent: float = 1.1
    # Zipf exponent of dish-type popularity (milder: every dish type stays represented).
    dish_zipf_exponent: float = 1.0
    core_size: int = 2
    core_probability: float = 0.85
    tail_probability: float = 0.3
    staple_probability: float = 0.5
    extra_labels_mean: float = 1.0
    plate_probability: float = 0.8
    min_visible: int = 2
    max_visible: int = 6
    min_object_scale: float = 0.10
    max_object_scale: float = 0.17

    @property
    def n_visible(self) -> int:
        return self.n_labels - self.n_invisible

    @property
    def n_group_labels(self) -> int:
        """Visible labels that belong to exactly one dish type's group."""
        return self.n_visible - self.n_cuisines * self.staples_per_cuisine


PRESETS: dict[str, DatasetPreset] = {
    # Unit tests of other modules: seconds on one core.
    "tiny": DatasetPreset(
        n_images=60,
        n_labels=24,
        n_dish_types=4,
        n_cuisines=2,
        image_size=32,
        n_invisible=3,
        min_object_scale=0.14,
        max_object_scale=0.22,
    ),
    # Tests, demo and CPU benchmarks.
    "small": DatasetPreset(n_images=600, n_labels=60, n_dish_types=8, n_cuisines=3),
    # The paper's BBC Food scale (seed 000): 3,379 recipes, 708 ingredients.
    "paper": DatasetPreset(
        n_images=3379,
        n_labels=708,
        n_dish_types=48,
        n_cuisines=10,
        n_invisible=20,
        staples_per_cuisine=2,
        extra_labels_mean=1.5,
    ),
}


def resolve_preset(preset: str | DatasetPreset, overrides: dict[str, object]) -> DatasetPreset:
    """The preset named ``preset`` (or given) with ``overrides`` applied, validated."""
    if isinstance(preset, DatasetPreset):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ConfigError(
            "config.unknown_preset", f"unknown preset {preset!r}; choose from {sorted(PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(DatasetPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError("config.unknown_parameter", f"unknown dataset parameter(s) {unknown}")
    config = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    _validate(config)
    return config


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError("config.invalid_dataset", message)


def _validate(c: DatasetPreset) -> None:
    for name in ("n_images", "n_labels", "n_dish_types", "n_cuisines", "core_size"):
        value = getattr(c, name)
        _require(isinstance(value, int) and value >= 1, f"{name} must be a positive int")
    _require(isinstance(c.image_size, int) and c.image_size >= 16, "image_size must be >= 16")
    _require(0 <= c.n_invisible < c.n_labels, "n_invisible must be in [0, n_labels)")
    _require(c.staples_per_cuisine >= 0, "staples_per_cuisine must be >= 0")
    _require(c.n_cuisines <= c.n_dish_types, "need at least one dish type per cuisine")
    _require(1 <= c.min_visible <= c.max_visible <= 6, "need 1 <= min_visible <= max_visible <= 6")
    _require(
        c.n_group_labels >= c.n_dish_types * c.min_visible,
        f"{c.n_group_labels} group labels cannot give each of {c.n_dish_types} dish types "
        f"{c.min_visible} visible ingredients; raise n_labels or lower n_dish_types",
    )
    for name in (
        "core_probability",
        "tail_probability",
        "staple_probability",
        "plate_probability",
    ):
        _require(0.0 <= getattr(c, name) <= 1.0, f"{name} must be in [0, 1]")
    _require(c.zipf_exponent > 0 and c.dish_zipf_exponent >= 0, "Zipf exponents must be > 0")
    _require(c.extra_labels_mean >= 0, "extra_labels_mean must be >= 0")
    _require(
        0.05 <= c.min_object_scale <= c.max_object_scale <= 0.3,
        "need 0.05 <= min_object_scale <= max_object_scale <= 0.3",
    )
