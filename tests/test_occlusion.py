"""Occlusion against a brute-force reference on a linear 'model' with known regions."""

from __future__ import annotations

import numpy as np
import pytest

from xmlcore.errors import ExplainError
from xmlcore.explain.occlusion import OcclusionExplainer

SIZE = 16


class RegionModel:
    """out0 = mean red over rows/cols 2..7; out1 = mean green over rows 10..15, cols 0..5.

    Counts its calls and batch sizes so tests can see how work is packed.
    """

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8
        self.batches.append(len(images))
        x = images.astype(np.float64)
        red = x[:, 2:8, 2:8, 0].mean(axis=(1, 2))
        green = x[:, 10:, :6, 1].mean(axis=(1, 2))
        return np.stack([red, green], axis=1)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def brute_force_windows(
    image: np.ndarray, column: int, patch: int, starts: list[int]
) -> np.ndarray:
    model = RegionModel()
    base = model(image[None])[0, column]
    total = np.zeros((SIZE, SIZE))
    count = np.zeros((SIZE, SIZE))
    for top in starts:
        for left in starts:
            hidden = image.copy()
            hidden[top : top + patch, left : left + patch] = 0
            total[top : top + patch, left : left + patch] += base - model(hidden[None])[0, column]
            count[top : top + patch, left : left + patch] += 1
    return total / count


@pytest.mark.parametrize(
    ("patch", "stride", "starts"), [(4, 4, [0, 4, 8, 12]), (6, 4, [0, 4, 8, 10])]
)
def test_windows_match_brute_force(patch: int, stride: int, starts: list[int]) -> None:
    imgs = images(2)
    explainer = OcclusionExplainer(RegionModel(), patch=patch, stride=stride, fill=0)
    result = explainer.explain(imgs, [1, 0])
    for i, row in enumerate(result):
        assert [e.target.column for e in row] == [1, 0]
        for e in row:
            expected = brute_force_windows(imgs[i], e.target.column, patch, starts)
            assert e.heatmap.dtype == np.float32 and e.heatmap.shape == (SIZE, SIZE)
            assert np.allclose(e.heatmap, expected, atol=1e-4)
    red = result[0][1].heatmap
    inside = np.zeros((SIZE, SIZE), bool)
    inside[2:8, 2:8] = True
    assert red[inside].mean() > 3 * red[~inside].mean() > 0
    assert red[12:, 12:].max() == 0
    assert result[0][1].prediction == pytest.approx(imgs[0, 2:8, 2:8, 0].mean())
    assert result[0][0].provenance["params"] == {
        "mode": "windows", "patch": patch, "stride": stride, "fill": 0
    }  # fmt: skip


def test_windows_of_several_images_share_forward_batches() -> None:
    model = RegionModel()
    imgs = images(3, seed=1)
    packed = OcclusionExplainer(model, patch=4, stride=4, batch_size=20).explain(imgs, [0, 1])
    # 3 originals, then 3 x 16 windows in batches of 20: 20, 20, 8.
    assert model.batches == [3, 20, 20, 8]
    single = OcclusionExplainer(RegionModel(), patch=4, stride=4, batch_size=1).explain(
        imgs, [0, 1]
    )
    for row_p, row_s in zip(packed, single, strict=True):
        for a, b in zip(row_p, row_s, strict=True):
            assert np.allclose(a.heatmap, b.heatmap)


def test_mean_fill_and_colour_fill() -> None:
    img = np.full((1, SIZE, SIZE, 3), 100, np.uint8)
    img[0, 2:8, 2:8, 0] = 200  # red square exactly on region 0
    mean_fill = OcclusionExplainer(RegionModel(), patch=4, stride=4).explain(img, [0])[0][0]
    white = OcclusionExplainer(RegionModel(), patch=4, stride=4, fill=(255, 255, 255))
    negative = white.explain(img, [0])[0][0]
    assert mean_fill.heatmap.max() > 0 and mean_fill.heatmap.min() >= 0
    assert negative.heatmap.max() <= 0 and negative.heatmap.min() < 0  # white raises red


def test_segment_mode_drops_per_superpixel() -> None:
    imgs = images(2, seed=2)
    seg = np.zeros((SIZE, SIZE), np.int32)
    seg[:8, 8:], seg[8:, :8], seg[8:, 8:] = 1, 2, 3
    segments = np.stack([seg, seg + 10])  # ids need not start at 0
    model = RegionModel()
    result = OcclusionExplainer(model, fill=0, batch_size=5).explain(
        imgs, [0, 1], segments=segments
    )
    assert sum(model.batches) == 2 + 2 * 4
    for i, row in enumerate(result):
        red, green = row
        base = RegionModel()(imgs[i : i + 1])[0]
        hidden = imgs[i].copy()
        hidden[:8, :8] = 0
        expected_red = base[0] - RegionModel()(hidden[None])[0, 0]
        assert red.segment_weights is not None and red.segments is not None
        assert red.segment_weights[0] == pytest.approx(expected_red, rel=1e-5)
        assert red.top_segments == [0]  # only the top-left quadrant overlaps region 0
        assert np.allclose(red.heatmap[:8, :8], expected_red)
        assert np.allclose(red.heatmap[8:], 0) and red.segments.max() == 3
        assert green.top_segments == [2] and red.num_samples == 5
        assert len(red.provenance["segment_hash"]) == 16


def test_segmenter_in_constructor_and_errors() -> None:
    def quadrants(image: np.ndarray) -> np.ndarray:
        seg = np.zeros(image.shape[:2], np.int32)
        seg[:8, 8:], seg[8:, :8], seg[8:, 8:] = 1, 2, 3
        return seg

    e = OcclusionExplainer(RegionModel(), segmenter=quadrants, fill=0).explain(images(1), [0])[0][0]
    assert e.provenance["params"]["mode"] == "segments" and e.top_segments == [0]
    explainer = OcclusionExplainer(RegionModel())
    with pytest.raises(ExplainError) as err:
        explainer.explain(images(1), [0], segments=np.zeros((8, 8), np.int32))
    assert err.value.code == "explain.bad_segments"
    with pytest.raises(ExplainError) as err:
        explainer.explain(images(1), [2])
    assert err.value.code == "explain.unknown_target"
    with pytest.raises(ExplainError):
        OcclusionExplainer(lambda x: np.zeros((1, 2))).explain(images(2), [0])
