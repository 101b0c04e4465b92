"""Perturbed images built in the graph (``PerturbingPredictor``) give LIME's answers.

The device path must be the host path moved, not a new method: the same masks, the
same uint8 pixels, hence the same coefficients, whatever the packing of samples into
batches (several images per batch, an image split over batches, images with different
segment counts, adaptive rounds).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xmlcore.datasets import generate_dishes
from xmlcore.errors import ExplainError
from xmlcore.explain import (
    AdaptiveSampling,
    FelzenszwalbSegmenter,
    LimeExplainer,
    OcclusionExplainer,
)
from xmlcore.explain.device_sampling import PerturbingPredictor

SIZE = 32


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return generate_dishes("tiny", seed=1, n_images=5, image_size=SIZE).images


def host_fn(model: keras.Model):
    return lambda batch: np.asarray(model.predict_on_batch(np.asarray(batch, np.float32)))


def max_diff(a, b) -> float:
    return max(
        float(np.abs(x.segment_weights - y.segment_weights).max())
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


@pytest.mark.parametrize(
    ("num_samples", "batch_size"),
    [(50, 16), (30, 128), (64, 64)],  # image split over batches / several per batch / exact
)
def test_lime_on_the_device_equals_the_host_path(model, images, num_samples, batch_size) -> None:
    segmenter = FelzenszwalbSegmenter(scale=20, min_size=5)  # segment counts differ per image
    counts = {int(segmenter(img).max()) + 1 for img in images}
    assert len(counts) > 1
    kwargs = {"num_samples": num_samples, "batch_size": batch_size, "segmenter": segmenter}
    host = LimeExplainer(host_fn(model), **kwargs).explain(images, [0, 2, 4])
    device = LimeExplainer(PerturbingPredictor(model), **kwargs).explain(images, [0, 2, 4])
    assert max_diff(host, device) < 1e-9
    assert [r[0].top_segments for r in host] == [r[0].top_segments for r in device]


def test_adaptive_rounds_on_the_device_equal_the_host_path(model, images) -> None:
    rule = AdaptiveSampling(min_samples=40, max_samples=160, batch=40, z=0.5)
    host = LimeExplainer(host_fn(model), adaptive=rule, batch_size=32).explain(images, [1])
    device = LimeExplainer(PerturbingPredictor(model), adaptive=rule, batch_size=32).explain(
        images, [1]
    )
    assert [r[0].num_samples for r in host] == [r[0].num_samples for r in device]
    assert max_diff(host, device) < 1e-9


def test_paired_stratified_adaptive_lime_on_the_device_equals_the_host_path(model, images) -> None:
    # The samplers differ only in the mask rows they hand over; this one exercises
    # pairs, stratified counts, odd round sizes and the stability rule at once.
    sampler = "antithetic_stratified"
    rule = AdaptiveSampling(criterion="stability", min_samples=41, max_samples=121, batch=40)
    kwargs = {"adaptive": rule, "batch_size": 32, "sampler": sampler}
    host = LimeExplainer(host_fn(model), **kwargs).explain(images, [1, 3])
    device = LimeExplainer(PerturbingPredictor(model), **kwargs).explain(images, [1, 3])
    assert [r[0].num_samples for r in host] == [r[0].num_samples for r in device]
    assert max_diff(host, device) < 1e-9
    assert [r[1].metrics for r in host] == [r[1].metrics for r in device]


def test_plain_calls_send_uint8_and_match_the_model(model, images) -> None:
    predictor = PerturbingPredictor(model)
    expected = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    np.testing.assert_allclose(predictor(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor(images[:3]), expected[:3], rtol=1e-5, atol=1e-6)
    floats = images.astype(np.float64) + 0.2  # rounded to the uint8 the model is fed
    np.testing.assert_allclose(predictor(floats), expected, rtol=1e-5, atol=1e-6)
    assert predictor.uint8_model.input.dtype == "uint8"


@pytest.mark.parametrize(("patch", "stride", "batch"), [(8, 8, 256), (12, 5, 7)])
def test_occlusion_windows_on_the_device_equal_the_host_path(
    model, images, patch, stride, batch
) -> None:
    """Boxes built in the graph: overlapping windows, a last window flush with the
    edge, batches that mix images."""
    kwargs = {"patch": patch, "stride": stride, "batch_size": batch}
    host = OcclusionExplainer(host_fn(model), **kwargs).explain(images[:3], [0])
    device = OcclusionExplainer(PerturbingPredictor(model), **kwargs).explain(images[:3], [0])
    for a, b in zip(host, device, strict=True):
        np.testing.assert_allclose(a[0].heatmap, b[0].heatmap, rtol=1e-4, atol=1e-6)


def test_a_model_without_image_input_is_refused() -> None:
    inputs = keras.Input((7,))
    flat = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ExplainError, match="model input"):
        PerturbingPredictor(flat)
