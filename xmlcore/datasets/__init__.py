"""Seeded procedural "dishes": images, ingredient labels and the ground truth behind them.

No real data set can be downloaded where xmlx is built and tested, so every test,
benchmark and the demo use this generator. It reproduces what matters in the paper's
BBC Food data (seed 000): a plate-like distractor in most images (the "plate problem"),
ingredients with a distinct look each, recipes drawn from a hierarchy (cuisine -> dish
type -> ingredient group) with power-law label frequencies (head and tail), labels with
no visual form (salt-like, known by co-occurrence only), and a pixel mask for every
visible label in every image, so explanations and hierarchy recovery can be scored.

    ds = generate_dishes("small", seed=0)        # or "tiny", "paper"; overrides by keyword
    manifest = write_dataset(ds, "out/")          # images/, manifest.csv, groups.json, ...

Real data: ``generate_digit_scenes("digits")`` composes scikit-learn's bundled
handwritten digits into multi-label scenes (10 digit labels + 4 group labels).
"""

from xmlcore.datasets.digits import (
    DIGIT_PRESETS,
    DigitScenePreset,
    DigitScenes,
    generate_digit_scenes,
)
from xmlcore.datasets.generate import GeneratedDataset, generate_dishes, sample_recipes
from xmlcore.datasets.presets import PRESETS, DatasetPreset
from xmlcore.datasets.recipes import PANTRY, RecipeBook
from xmlcore.datasets.storage import read_masks, write_dataset

__all__ = [
    "DIGIT_PRESETS",
    "PANTRY",
    "PRESETS",
    "DatasetPreset",
    "DigitScenePreset",
    "DigitScenes",
    "GeneratedDataset",
    "RecipeBook",
    "generate_digit_scenes",
    "generate_dishes",
    "read_masks",
    "sample_recipes",
    "write_dataset",
]
