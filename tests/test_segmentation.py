"""Segmenters: consecutive int32 ids, sensible regions, provenance hash, bad input."""

import numpy as np
import pytest

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.segmentation import (
    FelzenszwalbSegmenter,
    QuickshiftSegmenter,
    SlicSegmenter,
    relabel_consecutive,
    segment_hash,
)

SEGMENTERS = [SlicSegmenter(), QuickshiftSegmenter(), FelzenszwalbSegmenter()]


COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 60), (250, 250, 250)])


def scene_regions(h: int = 64, w: int = 64) -> np.ndarray:
    """Four blocks (0..3) and a central disc (4)."""
    yy, xx = np.mgrid[0:h, 0:w]
    regions = (yy >= h // 2) * 2 + (xx >= w // 2)
    regions[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 6) ** 2] = 4
    return regions


def make_scene(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Flat colour regions plus mild noise."""
    rng = np.random.default_rng(seed)
    img = COLOURS[scene_regions(h, w)] + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("segmenter", SEGMENTERS, ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_ids_are_consecutive_int32(segmenter, shape):
    image = make_scene(*shape)
    segments = segmenter(image)
    assert segments.dtype == np.int32
    assert segments.shape == shape
    k = int(segments.max()) + 1
    assert k >= 2
    np.testing.assert_array_equal(np.unique(segments), np.arange(k))


@pytest.mark.parametrize("segmenter", SEGMENTERS, ids=lambda s: s.name)
def test_segments_follow_colour_edges(segmenter):
    """Almost every pixel's superpixel lies mostly within that pixel's colour region."""
    image, regions = make_scene(), scene_regions()
    segments = segmenter(image)
    in_majority = 0
    for s in np.unique(segments):
        _, counts = np.unique(regions[segments == s], return_counts=True)
        in_majority += counts.max()
    assert in_majority / regions.size > 0.9


def test_slic_defaults_and_numbering():
    seg = SlicSegmenter()
    assert seg.describe() == {
        "name": "slic",
        "params": {
            "n_segments": 50,
            "compactness": 10.0,
            "sigma": 1.0,
            "max_num_iter": 10,
            "start_label": 0,
        },
    }
    segments = SlicSegmenter(start_label=1)(make_scene())
    assert segments.min() == 0


def test_quickshift_has_lime_defaults_and_is_seeded():
    seg = QuickshiftSegmenter()
    assert (seg.kernel_size, seg.max_dist, seg.ratio) == (4.0, 200.0, 0.2)
    image = make_scene(seed=3)
    np.testing.assert_array_equal(seg(image), QuickshiftSegmenter()(image))


def test_relabel_consecutive_keeps_order():
    labels = np.array([[5, 5, 9], [2, 9, 2]])
    np.testing.assert_array_equal(relabel_consecutive(labels), [[1, 1, 2], [0, 2, 0]])


def test_segment_hash_is_stable_and_sensitive():
    segments = SlicSegmenter()(make_scene())
    h = segment_hash(segments)
    assert h == segment_hash(segments.copy().astype(np.int64))
    assert len(h) == 16
    changed = segments.copy()
    changed[0, 0] = segments.max()
    assert segment_hash(changed) != h
    flat = np.zeros((4, 6), dtype=np.int32)
    assert segment_hash(flat) != segment_hash(flat.reshape(6, 4))


def test_uniform_image_is_one_segment_for_felzenszwalb():
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    segments = FelzenszwalbSegmenter()(image)
    np.testing.assert_array_equal(segments, 0)


BAD_IMAGES = [
    np.zeros((16, 16), np.uint8),
    np.zeros((16, 16, 3), np.float32),
    np.zeros((16, 16, 4), np.uint8),
]


@pytest.mark.parametrize("bad", BAD_IMAGES)
def test_bad_images_are_refused(bad):
    with pytest.raises(ExplainError) as err:
        SlicSegmenter()(bad)
    assert err.value.code == "explain.bad_images"


@pytest.mark.parametrize(
    "make",
    [
        lambda: SlicSegmenter(n_segments=0),
        lambda: QuickshiftSegmenter(ratio=2.0),
        lambda: FelzenszwalbSegmenter(scale=0),
    ],
)
def test_bad_parameters_are_refused(make):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.code == "config.segmenter"
