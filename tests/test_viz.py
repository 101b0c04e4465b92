"""Decode the PNGs and check colours, sizes and dimming pixel by pixel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xmlcore import viz
from xmlcore.errors import ExplainError
from xmlcore.explain.result import Explanation, TargetInfo

H, W = 16, 20


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(png)))


def signed_heatmap() -> np.ndarray:
    """Positive block top-left, negative block bottom-right, zero elsewhere."""
    h = np.zeros((H, W), np.float32)
    h[:6, :6] = 2.0
    h[10:, 14:] = -1.0
    return h


def test_heatmap_is_red_for_positive_blue_for_negative_white_for_zero() -> None:
    rgb = decode(viz.heatmap_png(signed_heatmap())).astype(int)
    assert rgb.shape == (H, W, 3)
    r, g, b = rgb[2, 2]
    assert r > 150 and r > b + 100 and r > g + 100  # strongest positive: deep red
    r, g, b = rgb[12, 16]
    assert b > r + 50  # half-strength negative: blue-ish
    assert np.all(rgb[8, 8] >= 240)  # zero: white
    big = decode(viz.heatmap_png(signed_heatmap(), scale=3))
    assert big.shape == (3 * H, 3 * W, 3) and np.array_equal(big[::3, ::3], rgb)


def test_asymmetric_heatmap_uses_the_whole_ramp() -> None:
    h = np.linspace(1, 5, H * W, dtype=np.float32).reshape(H, W)
    rgb = decode(viz.heatmap_png(h, symmetric=False)).astype(int)
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # the minimum is blue even though it is positive
    assert rgb[-1, -1, 0] > rgb[-1, -1, 2]
    assert np.all(
        decode(viz.heatmap_png(np.full((H, W), 3.0), symmetric=False)) >= 240
    )  # constant map


def test_graymap_shows_magnitude() -> None:
    gray = decode(viz.graymap_png(signed_heatmap()))
    assert gray.shape == (H, W) and gray.dtype == np.uint8
    assert gray[0, 0] == 255 and gray[15, 19] == 128 and gray[8, 8] == 0


def test_blend_colours_only_where_attribution_is() -> None:
    image = np.full((H, W, 3), 128, np.uint8)
    out = decode(viz.blend_png(image, signed_heatmap(), alpha=0.6)).astype(int)
    assert np.array_equal(out[8, 8], [128, 128, 128])  # zero attribution: image untouched
    assert out[2, 2, 0] > 128 > out[2, 2, 2]  # positive: towards red
    assert out[12, 16, 2] > out[12, 16, 0]  # negative: towards blue


def test_mask_dims_everything_but_the_top_segments() -> None:
    image = np.full((H, W, 3), 200, np.uint8)
    segments = np.zeros((H, W), np.int32)
    segments[:, 10:] = 1
    segments[8:, :10] = 2
    out = decode(viz.mask_png(image, segments, [1], dim=0.25, boundaries=False))
    assert np.all(out[:, 10:] == 200)
    assert np.all(out[:, :10] == 50)
    edged = decode(viz.mask_png(image, segments, [1, 2]))
    assert np.array_equal(edged[0, 10], [255, 220, 0])  # inner border of a kept segment
    assert np.array_equal(edged[4, 15], [200, 200, 200])  # its interior
    assert np.array_equal(edged[0, 0], [60, 60, 60])  # a dimmed segment gets no border


def test_panel_has_three_tiles_and_text() -> None:
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    explanation = Explanation(
        image_index=0,
        target=TargetInfo(column=3, kind="label", index=1, name="garlic"),
        method="occlusion",
        heatmap=signed_heatmap(),
        prediction=0.81,
    )
    short = decode(viz.panel_png(image, explanation, [("garlic", 0.81)], scale=3))
    long_text = "latent 9 <- units 64, 34, 11 <- " + ", ".join(f"label{i}" for i in range(40))
    tall = decode(
        viz.panel_png(image, explanation, [("garlic", 0.81)], long_text, ["garlic", "onion"])
    )
    assert short.shape[1] == tall.shape[1] == 3 * 3 * W + 4 * 8
    assert tall.shape[0] > short.shape[0] + 3 * 18  # true labels + wrapped hierarchy lines
    tile = short[28 : 28 + 3 * H, 8 : 8 + 3 * W]
    assert np.array_equal(tile[::3, ::3], image)  # first tile is the image, upscaled
    text_band = short[28 + 3 * H + 8 :]
    assert (text_band < 100).any()  # some dark ink was written


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ExplainError) as err:
        viz.heatmap_png(np.zeros((2, 3, 4)))
    assert err.value.code == "explain.bad_heatmap"
    with pytest.raises(ExplainError) as err:
        viz.blend_png(np.zeros((H, W, 3), np.uint8), np.zeros((H + 1, W)))
    assert err.value.code == "explain.bad_images"
    with pytest.raises(ExplainError):
        viz.heatmap_png(np.full((H, W), np.nan))


def test_panel_accepts_multiline_hierarchy_text() -> None:
    import io

    from PIL import Image

    from xmlcore.explain.result import Explanation, TargetInfo
    from xmlcore.viz import panel_png

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    segments = np.repeat(np.arange(4), 64).reshape(16, 16).astype(np.int32)
    explanation = Explanation(
        image_index=0,
        target=TargetInfo(column=0),
        method="lime",
        heatmap=rng.normal(size=(16, 16)).astype(np.float32),
        segments=segments,
        top_segments=[1, 2],
    )
    text = "latent 1 <- units 3, 2 <- garlic, onion\nH1, Label 3: garlic, onion"
    one_line = panel_png(image, explanation, [("garlic", 0.9)], "latent 1 <- units 3")
    two_lines = panel_png(image, explanation, [("garlic", 0.9)], text)
    assert Image.open(io.BytesIO(two_lines)).size[1] > Image.open(io.BytesIO(one_line)).size[1]
