"""Faithfulness and localisation scores, checked by hand on a linear 'model'."""

from __future__ import annotations

import numpy as np
import pytest

from xmlcore.errors import ExplainError
from xmlcore.evaluate import (
    deletion_auc,
    evaluate_explanations,
    insertion_auc,
    mass_in_mask,
    perturbation_curves,
    pointing_game,
    random_attribution,
)
from xmlcore.explain.occlusion import OcclusionExplainer
from xmlcore.explain.result import Explanation, TargetInfo

SIZE = 16
REGION = (slice(0, 8), slice(8, 16))  # top-right quadrant: a quarter of the image


class RedInRegion:
    """out0 = mean red inside REGION, out1 = constant. Counts forward calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        red = images[:, REGION[0], REGION[1], 0].astype(np.float64).mean(axis=(1, 2))
        return np.stack([red, np.ones(len(images))], axis=1)


def flat_red_image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = 200
    return image


def region_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION] = True
    return mask


def test_deletion_and_insertion_by_hand() -> None:
    model, image = RedInRegion(), flat_red_image()
    good, bad = region_mask().astype(np.float32), (~region_mask()).astype(np.float32)
    # Deleting the region first: the curve falls linearly from 1 to 0 over the first
    # quarter of the pixels, then stays at 0 -> area 1/8. The reverse order -> 7/8.
    assert deletion_auc(model, image, good, 0, fill=0) == pytest.approx(0.125)
    assert deletion_auc(model, image, bad, 0, fill=0) == pytest.approx(0.875)
    assert insertion_auc(model, image, good, 0, fill=0) == pytest.approx(0.875)
    assert insertion_auc(model, image, bad, 0, fill=(0, 0, 0)) == pytest.approx(0.125)
    assert model.calls == 4  # every step of an image in one forward batch


def test_segment_order_and_ties() -> None:
    model, image = RedInRegion(), flat_red_image()
    segments = np.zeros((SIZE, SIZE), np.int64)
    segments[:8, 8:], segments[8:, :8], segments[8:, 8:] = 1, 2, 3
    heat = np.where(region_mask(), 5.0, 1.0)  # three segments tie for second place
    auc = deletion_auc(model, image, heat, 0, fill=0, by="segments", segments=segments, steps=4)
    assert auc == pytest.approx(0.125)
    x, y = perturbation_curves(
        "deletion", model, image[None], [heat], [0], steps=4, fill=0, by="segments",
        segments=[segments],
    )  # fmt: skip
    assert np.allclose(x, [[0, 0.25, 0.5, 0.75, 1]]) and np.allclose(y, [[1, 0, 0, 0, 0]])


def test_blocks_and_the_first_part_of_the_curve() -> None:
    model, image = RedInRegion(), flat_red_image()
    good, bad = region_mask().astype(np.float32), (~region_mask()).astype(np.float32)
    # 8-px blocks are the quadrants; the region is one of them.
    x, y = perturbation_curves(
        "deletion", model, image[None], [good], [0], steps=4, fill=0, block=8
    )
    assert np.allclose(x, [[0, 0.25, 0.5, 0.75, 1]]) and np.allclose(y, [[1, 0, 0, 0, 0]])
    # Only the first quarter of the pixels: the region falls linearly over all of it.
    first = {"fill": 0, "by": "pixels", "steps": 4, "max_fraction": 0.25}
    assert deletion_auc(model, image, good, 0, **first) == pytest.approx(0.5)
    assert deletion_auc(model, image, bad, 0, **first) == pytest.approx(1.0)
    assert insertion_auc(model, image, good, 0, **first) == pytest.approx(0.5)
    with pytest.raises(ExplainError):
        deletion_auc(model, image, good, 0, max_fraction=0)


def test_a_flat_output_has_no_curve() -> None:
    model, image = RedInRegion(), flat_red_image()
    assert np.isnan(deletion_auc(model, image, region_mask().astype(float), 1, fill=0))


def test_pointing_game_and_mass() -> None:
    mask = region_mask()
    heat = np.zeros((SIZE, SIZE))
    heat[2, 12] = 3.0  # inside
    heat[10, 2] = 1.0  # outside
    heat[12, 12] = -4.0  # negative mass is ignored
    assert pointing_game(heat, mask)
    assert mass_in_mask(heat, mask) == pytest.approx(0.75)
    heat[10, 2] = 5.0
    assert not pointing_game(heat, mask)
    tie = np.where(mask, 1.0, 0.0)
    tie[8:, :] = 1.0  # max shared by 64 pixels inside and 128 outside
    assert not pointing_game(tie, mask)
    assert mass_in_mask(-np.ones((SIZE, SIZE)), mask) == 0.0
    with pytest.raises(ExplainError):
        pointing_game(heat, np.ones((4, 4), bool))


def test_random_attribution_is_seeded_chance() -> None:
    a, b = random_attribution((SIZE, SIZE), seed=1), random_attribution((SIZE, SIZE), seed=1)
    assert a.dtype == np.float32 and a.shape == (SIZE, SIZE) and np.array_equal(a, b)
    masses = [
        mass_in_mask(random_attribution((64, 64), s), np.eye(64, dtype=bool)) for s in range(5)
    ]
    assert np.mean(masses) == pytest.approx(1 / 64, abs=0.01)


def test_evaluate_explanations_packs_images_and_ranks_methods() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(50, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    model = RedInRegion()
    occlusion = OcclusionExplainer(model, patch=4, stride=4, fill=0).explain(images, [0])
    found = [row[0] for row in occlusion]
    chance = [
        Explanation(i, TargetInfo(column=0), "random", random_attribution((SIZE, SIZE), i))
        for i in range(3)
    ]
    masks = [region_mask()] * 3
    model.calls = 0
    scores = evaluate_explanations(model, images, found, masks, steps=10, fill=0, batch_size=64)
    assert model.calls == 2  # 3 images x 11 steps fit one batch, per curve kind
    baseline = evaluate_explanations(model, images, chance, masks, steps=10, fill=0)
    assert scores["n"] == 3 and scores["n_undefined"] == 0
    assert scores["pointing_game"] == 1.0 and scores["mass_in_mask"] == pytest.approx(1.0)
    assert scores["deletion_auc"] < 0.2 < baseline["deletion_auc"]
    assert scores["insertion_auc"] > 0.8 > baseline["insertion_auc"]
    with pytest.raises(ExplainError):
        evaluate_explanations(model, images, found, masks[:2])
