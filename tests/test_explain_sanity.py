"""Sanity checks of the explainers on models whose evidence is planted (bench/explain_sanity.py).

Tiny case: a few 32 px generated dishes, each method built by ``make_explainer`` (the
service's door) for a model that reads only one known region. A method that points
outside that region is wrong about the model, so these tests fail on a broken sampler,
surrogate, occlusion window or gradient path, not only on a crash.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.bench_scripts import load_bench_script
from xmlcore.datasets import generate_dishes
from xmlcore.errors import ConfigError
from xmlcore.evaluate import mass_in_mask, pointing_game
from xmlcore.explain import SlicSegmenter, TargetInfo
from xmlcore.methods import make_explainer

sanity = load_bench_script("explain_sanity")
models = load_bench_script("sanity_models")

SIZE = 32
TARGET = [TargetInfo(column=0, kind="latent", index=0, name="planted")]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return generate_dishes("tiny", seed=3, n_images=3, image_size=SIZE).images


def _explain(model: object, method: str, image: np.ndarray, params: dict) -> np.ndarray:
    explainer = make_explainer(method, model, params)  # type: ignore[arg-type]
    return explainer.explain(image[None], [TARGET])[0][0].heatmap


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("lime", {"num_samples": 200, "seed": 0}),
        ("kernel_shap", {"n_samples": 200, "seed": 0}),
        ("occlusion", {"patch": 4, "stride": 2}),
        ("integrated_gradients", {"steps": 8, "baseline": "mean"}),
        ("gradcam", {}),
    ],
)
def test_methods_find_the_region_a_planted_cnn_reads(
    images: np.ndarray, method: str, params: dict
) -> None:
    box = (SIZE // 8, SIZE // 2, SIZE // 2, 7 * SIZE // 8)
    hits, mass = [], []
    for image in images:
        model = models.RegionCNN(models.box_region(SlicSegmenter()(image), box))
        heatmap = _explain(model, method, image, params)
        hits.append(pointing_game(heatmap, model.evidence))
        mass.append(mass_in_mask(heatmap, model.evidence))
    assert all(hits)
    assert np.mean(mass) >= 0.6


def test_a_mask_score_is_explained_inside_its_mask(images: np.ndarray) -> None:
    data = generate_dishes("tiny", seed=3, n_images=3, image_size=SIZE)
    for image, masks in zip(images, data.masks, strict=True):
        label_mask = max(masks.values(), key=lambda m: int(m.sum()))
        model = models.MaskEnergy(
            image, models.snap_to_segments(label_mask, SlicSegmenter()(image))
        )
        heatmap = _explain(model, "lime", image, {"num_samples": 200, "seed": 0})
        assert pointing_game(heatmap, model.evidence)
        assert mass_in_mask(heatmap, model.evidence) >= 0.6


def test_a_model_without_gradients_refuses_gradient_methods(images: np.ndarray) -> None:
    class PerturbationOnly:
        image_size = (SIZE, SIZE)

        def device_predictor(self):  # type: ignore[no-untyped-def]
            return lambda x: np.asarray(x, dtype=np.float32).mean(axis=(1, 2))

        def keras_model(self) -> None:
            return None

    with pytest.raises(ConfigError) as err:
        make_explainer("smoothgrad", PerturbationOnly(), {})
    assert err.value.code == "config.method_unavailable"
    heatmap = _explain(PerturbationOnly(), "occlusion", images[0], {"patch": 4, "stride": 4})
    assert heatmap.shape == (SIZE, SIZE)


def test_randomising_the_top_layers_changes_weights_and_spearman_sees_it() -> None:
    inputs = keras.Input((SIZE, SIZE, 3))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    hidden = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    copy = models.reinitialise_top(model, 1, seed=1)
    before, after = model.get_weights(), copy.get_weights()
    assert all(np.array_equal(b, a) for b, a in zip(before[:-2], after[:-2], strict=True))
    assert not np.array_equal(before[-2], after[-2])  # the top kernel is drawn afresh
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    assert sanity.spearman(a, a) == pytest.approx(1.0)
    assert sanity.spearman(a, -a) == pytest.approx(-1.0)
    assert sanity.spearman(a, np.zeros_like(a)) == 0.0


def test_the_planted_part_runs_alone_with_the_occlusion_window_asked_for() -> None:
    argv = ["--planted-only", "--methods", "occlusion", "--occlusion-window", "4,2",
            "--n-planted", "3", "--size", str(SIZE)]  # fmt: skip
    result = sanity.main(argv)
    assert result["setup"]["occlusion"] == {"patch": 4, "stride": 2}
    assert "trained" not in result and "randomisation" not in result  # no model trained
    for part in ("region_cnn", "mask_energy"):
        assert 0 <= result["planted"][part]["occlusion"]["mass_in_mask"] <= 1
    assert sanity.method_params("occlusion", 64, sanity.parse_args([])) == {"patch": 8, "stride": 4}
