"""Heatmap overlays (xmlcore.overlay) and the segment outlines they draw (xmlcore.viz)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from xmlcore.batch import MAX_HEATMAPS, explain_images, heatmap_name
from xmlcore.datasets import generate_dishes
from xmlcore.errors import ExplainError
from xmlcore.explain import TopKLabels
from xmlcore.model import train_two_step
from xmlcore.overlay import render_overlay
from xmlcore.viz import blend, mask, segment_outlines
from xmlx.keys import ITEM_ARTIFACT_NAMES


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, size=(32, 32, 3), dtype=np.uint8)
    segments = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 8, axis=0), 8, axis=1)
    heatmap = np.where(segments == 0, 1.0, 0.02 * (segments % 3 - 1)).astype(np.float32)
    return image, segments, heatmap


def _delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(rgb2lab(a) - rgb2lab(b), axis=-1)


def test_overlay_is_legible_size_with_a_scale_strip_and_its_values() -> None:
    image, segments, heatmap = _scene()
    overlay = render_overlay(image, heatmap, segments=segments, top_segments=[0])
    assert overlay.pixels.shape[1] == 256 and overlay.pixels.shape[0] > 256
    assert overlay.scale.high == pytest.approx(1.0) and overlay.scale.low == -overlay.scale.high
    decoded = np.asarray(Image.open(io.BytesIO(overlay.png())))
    assert np.array_equal(decoded, overlay.pixels)
    strip = overlay.pixels[256:]
    left, right = strip[-2, 1].astype(int), strip[-2, -2].astype(int)
    assert left[2] > left[0] and right[0] > right[2]  # blue on the left, red on the right


def test_top_segments_move_far_more_than_in_the_old_blend() -> None:
    image, segments, heatmap = _scene()
    new = render_overlay(image, heatmap, segments=segments, top_segments=[0]).pixels
    picture = new[:256:8, ::8]  # back to 32 px: the upscale is nearest-neighbour
    top = segments == 0
    inner = top.copy()
    inner[[0, 7], :] = inner[:, [0, 7]] = False  # outlines are drawn inside the segment
    new_top = _delta_e(image, picture)[inner].mean()
    old_top = _delta_e(image, blend(image, heatmap))[inner].mean()
    assert new_top > 10 and new_top > 1.5 * old_top  # old: at most half opaque
    assert _delta_e(image, picture)[~top].mean() < new_top


def test_segment_zero_gets_an_outline() -> None:
    _, segments, _ = _scene()
    edge = segment_outlines(segments, [0])
    assert edge[:8, :8].any() and not edge[8:, 8:].any()
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    kept = mask(image, segments, [0])
    assert (kept[7, :8] == [255, 220, 0]).all()  # its border row, in the outline colour


def test_pixel_methods_get_a_top_fraction_and_no_outline() -> None:
    image, _, _ = _scene()
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[:4, :4] = 1.0
    pixels = render_overlay(image, heatmap, top_fraction=0.02, min_side=64).pixels
    assert pixels.shape[1] == 64
    assert not (pixels[:64] == [255, 221, 0]).all(axis=-1).any()


def test_bad_inputs_are_refused_with_a_code() -> None:
    image, _, heatmap = _scene()
    with pytest.raises(ExplainError) as err:
        render_overlay(image[:16], heatmap)
    assert err.value.code == "explain.bad_images"
    with pytest.raises(ExplainError):
        render_overlay(image, np.full((32, 32), np.nan))


def test_every_overlay_name_is_an_allowed_artifact() -> None:
    names = [heatmap_name(k) for k in range(MAX_HEATMAPS)]
    assert names[0] == "heatmap.png" and names[1] == "heatmap_2.png"
    assert set(names) <= ITEM_ARTIFACT_NAMES


def test_a_multi_label_result_has_one_overlay_and_scale_per_label() -> None:
    data = generate_dishes("tiny", seed=0, image_size=32)
    model = train_two_step(
        data.images[:16], data.label_space.subset(np.arange(16)), layer_sizes=(8, 4), epochs=1,
        ae_params={"epochs": 5}, regressor_params={"head_units": [8]}, seed=0,
    )  # fmt: skip
    reports = explain_images(
        model, data.images[:2], method="occlusion", target=TopKLabels(3),
        params={"patch": 8, "stride": 8},
    )  # fmt: skip
    for report in reports:
        names = {"heatmap.png", "heatmap_2.png", "heatmap_3.png", "mask.png", "weights.npy"}
        assert set(report.artifacts) == names
        overlays = [e["overlay"] for e in report.result["explanations"]]
        assert [o["artifact"] for o in overlays] == [
            "heatmap.png",
            "heatmap_2.png",
            "heatmap_3.png",
        ]
        for overlay in overlays:
            picture = Image.open(io.BytesIO(report.artifacts[overlay["artifact"]]))
            assert picture.width >= 256
            assert overlay["scale"]["low"] == -overlay["scale"]["high"]
