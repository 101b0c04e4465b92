"""xmlcore.datasets.digits: real handwritten digits composed into multi-label scenes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from xmlcore.datasets import generate_digit_scenes
from xmlcore.datasets.digits import DIGIT_LABELS, GROUPS, digit_pools, scene_labels
from xmlcore.errors import ConfigError


@pytest.fixture(scope="module")
def scenes():
    return generate_digit_scenes(seed=3, n_images=40, held_out_rows=10)


def test_same_seed_same_bytes_other_seed_other_scenes(scenes) -> None:
    again = generate_digit_scenes(seed=3, n_images=40, held_out_rows=10)
    np.testing.assert_array_equal(again.images, scenes.images)
    assert again.digits == scenes.digits and again.sources == scenes.sources
    assert (again.label_space.matrix != scenes.label_space.matrix).nnz == 0
    other = generate_digit_scenes(seed=4, n_images=40, held_out_rows=10)
    assert other.digits != scenes.digits


def test_labels_are_the_digits_drawn_and_their_groups(scenes) -> None:
    space = scenes.label_space
    assert space.vocabulary == tuple(sorted((*DIGIT_LABELS, *GROUPS))) and space.n_labels == 14
    target = load_digits().target
    for i, digits in enumerate(scenes.digits):
        assert 1 <= len(digits) <= 3 and len(set(digits)) == len(digits)
        assert [int(target[s]) for s in scenes.sources[i]] == list(digits)
        names = space.labels_of(i)
        assert names == scene_labels(digits)
        assert ("even" in names) == any(d % 2 == 0 for d in digits)
        assert ("large" in names) == any(d >= 5 for d in digits)


def test_pixels_are_the_scans_drawn(scenes) -> None:
    scans = load_digits().images
    side = 8 * scenes.config.digit_scale
    for i in range(len(scenes.digits)):
        image = scenes.images[i]
        assert (image[..., 0] == image[..., 2]).all()  # grey
        ink = np.zeros(image.shape[:2], dtype=bool)
        for src, (top, left) in zip(scenes.sources[i], scenes.corners[i], strict=True):
            expected = np.kron(scans[src], np.ones((2, 2))) * 255 / 16
            patch = image[top : top + side, left : left + side, 0]
            np.testing.assert_array_equal(patch, expected.round().astype(np.uint8))
            ink[top : top + side, left : left + side] = True
        assert image[~ink].max() == 0  # nothing else drawn


def test_held_out_rows_use_held_out_scans_only(scenes) -> None:
    train_pool, held_pool = (set(np.concatenate(p).tolist()) for p in digit_pools())
    assert not train_pool & held_pool
    assert all(set(s) <= train_pool for s in scenes.sources[:30])
    assert all(set(s) <= held_pool for s in scenes.sources[30:])


@pytest.mark.parametrize(
    "kwargs",
    [{"preset": "nope"}, {"seed": -1}, {"held_out_rows": 50}, {"max_digits": 5},
     {"image_size": 20}, {"colour": 1}],
)  # fmt: skip
def test_bad_settings_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        generate_digit_scenes(n_images=40, **kwargs)
