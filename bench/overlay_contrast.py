"""How much does the heatmap artifact differ from the photo where it matters?

For each of ``--n-images`` generated dishes, a LIME explanation (of the planted
``RegionCNN`` of ``bench/sanity_models.py``, which reads one box of the image: the
rendering is what is measured, so the model only has to give LIME something clear to
find) is rendered twice:
the old artifact (``xmlcore.viz.blend``, what ``heatmap.png`` was) and the new one
(``xmlcore.overlay.render_overlay``). Per rendering, the mean CIE76 colour distance
(ΔE in CIELAB, ``skimage.color.rgb2lab``) between overlay and original image, over the
pixels of the top segments (``top``) and over the rest (``rest``). A ΔE of about 2.3 is
a just-noticeable difference; the new rendering should move the top segments far more
than the old one did, and move them more than the rest (the rest is dimmed, not
coloured). The overlay is compared at the image's own size (its upscaled pixels
downsampled back by the same whole factor; the scale strip left out).

Run: ``nice -n 10 .venv/bin/python bench/overlay_contrast.py`` (under a minute). The
LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from sanity_models import RegionCNN
from skimage.color import rgb2lab

from xmlcore.datasets import generate_dishes
from xmlcore.explain import LimeExplainer
from xmlcore.overlay import render_overlay
from xmlcore.viz import blend


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 ΔE per pixel between two uint8 RGB images of one shape."""
    return np.linalg.norm(rgb2lab(a) - rgb2lab(b), axis=-1)


def overlay_at_image_size(overlay: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The overlay's picture part (no scale strip) at ``shape``: every ``factor``-th
    pixel of the nearest-neighbour upscale is the rendered pixel itself."""
    factor = overlay.shape[1] // shape[1]
    return overlay[: shape[0] * factor : factor, ::factor][: shape[0], : shape[1]]


def contrast(image: np.ndarray, rendered: np.ndarray, top: np.ndarray) -> dict[str, float]:
    distance = delta_e(image, rendered)
    return {"top": float(distance[top].mean()), "rest": float(distance[~top].mean())}


def predictor(size: int, seed: int) -> Any:
    region = np.zeros((size, size), dtype=bool)
    region[size // 8 : size // 2, size // 2 : 7 * size // 8] = True
    return RegionCNN(region, seed=seed).device_predictor()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = generate_dishes("small", seed=args.seed, n_images=args.n_images, image_size=args.size)
    explainer = LimeExplainer(predictor(args.size, args.seed), num_samples=300, seed=args.seed)
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for explained, image in zip(explainer.explain(data.images, [0]), data.images, strict=True):
        e = explained[0]
        assert e.segments is not None
        top = np.isin(e.segments, list(e.top_segments))
        new = render_overlay(image, e.heatmap, segments=e.segments, top_segments=e.top_segments)
        rows["old"].append(contrast(image, blend(image, e.heatmap), top))
        small = overlay_at_image_size(new.pixels, image.shape[:2])
        rows["new"].append(contrast(image, small, top))
    result: dict[str, Any] = {
        name: {part: round(float(np.mean([r[part] for r in rs])), 2) for part in ("top", "rest")}
        for name, rs in rows.items()
    }
    result["top_ratio_new_over_old"] = round(result["new"]["top"] / result["old"]["top"], 2)
    result["setup"] = {"n_images": args.n_images, "size": args.size, "seed": args.seed,
                       "overlay_side": int(new.pixels.shape[1])}  # fmt: skip
    for name in ("old", "new"):
        top, rest = result[name]["top"], result[name]["rest"]
        print(f"{name}: mean ΔE top segments {top:.1f}, rest {rest:.1f}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
