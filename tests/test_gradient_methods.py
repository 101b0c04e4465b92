"""Gradient methods on tiny Keras models whose attributions can be worked out by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.backend_gradients import gradients, layer_gradients
from xmlcore.explain.gradient_methods import (
    GradCAM,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
    last_conv_layer,
    predict,
)
from xmlcore.explain.result import TargetInfo

SIZE = 16


def linear_model() -> keras.Model:
    """out0 = red summed over rows/cols 0..5 / 255; out1 = 2 * green over rows/cols 10..15 / 255."""
    kernel = np.zeros((SIZE, SIZE, 3, 2), dtype=np.float32)
    kernel[:6, :6, 0, 0] = 1.0 / 255
    kernel[10:, 10:, 1, 1] = 2.0 / 255
    inputs = keras.Input((SIZE, SIZE, 3))
    dense = keras.layers.Dense(2, use_bias=False)
    outputs = dense(keras.layers.Flatten()(inputs))
    dense.set_weights([kernel.reshape(-1, 2)])
    return keras.Model(inputs, outputs)


def smooth_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = keras.layers.Conv2D(4, 3, activation="tanh", name="conv_a")(h)
    h = keras.layers.Conv2D(6, 3, activation="tanh", name="conv_b")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, activation="tanh")(h))


def red_detector(nested: bool) -> keras.Model:
    """A 1x1 conv that passes the red channel, averaged: Grad-CAM must light up red."""
    conv = keras.layers.Conv2D(1, 1, activation="relu", name="red")
    body_in = keras.Input((SIZE, SIZE, 3))
    body_out = keras.layers.GlobalAveragePooling2D()(conv(keras.layers.Rescaling(1 / 255)(body_in)))
    conv.set_weights([np.array([1.0, -1.0, -1.0], np.float32).reshape(1, 1, 3, 1), np.zeros(1)])
    if not nested:
        return keras.Model(body_in, body_out)
    body = keras.Model(body_in, body_out, name="body")
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, keras.layers.Identity()(body(inputs)))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_backend_gradients_are_the_weighted_output_gradient() -> None:
    model = linear_model()
    x = random_images(2).astype(np.float32)
    grads = gradients(model, x, np.array([[1.0, 0.0], [0.5, 3.0]], dtype=np.float32))
    assert np.allclose(grads[0, :6, :6, 0], 1 / 255) and np.allclose(grads[0, 6:, :, :], 0)
    assert np.allclose(grads[1, :6, :6, 0], 0.5 / 255)
    assert np.allclose(grads[1, 10:, 10:, 1], 6 / 255)
    with pytest.raises(ExplainError) as err:
        gradients(model, x, np.ones((2, 5), dtype=np.float32))
    assert err.value.code == "explain.bad_output_weights"


def test_input_x_gradient_of_a_linear_model_is_its_contribution() -> None:
    images = random_images(2)
    result = InputXGradient(linear_model()).explain(images, [0, 1])
    assert [[e.target.column for e in row] for row in result] == [[0, 1], [0, 1]]
    red = images[..., 0].astype(np.float32) / 255
    for i, row in enumerate(result):
        expected = np.zeros((SIZE, SIZE), np.float32)
        expected[:6, :6] = red[i, :6, :6]
        assert row[0].heatmap.shape == (SIZE, SIZE) and row[0].heatmap.dtype == np.float32
        assert np.allclose(row[0].heatmap, expected, atol=1e-5)
        assert row[0].prediction == pytest.approx(float(expected.sum()), rel=1e-4)
        assert row[1].heatmap[:10, :10].max() == 0 and row[1].heatmap[10:, 10:].min() >= 0
        assert row[0].provenance["method"] == "input_x_gradient"
        assert row[0].provenance["backend"] == keras.backend.backend()


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_integrated_gradients_completeness(rule: str) -> None:
    model = smooth_cnn()
    images = random_images(3, seed=1)
    explainer = IntegratedGradients(model, baseline="mean", steps=48, rule=rule, batch_size=50)
    result = explainer.explain(images, [0, 2])
    for row in result:
        for e in row:
            gap = e.prediction - e.provenance["baseline_prediction"]
            assert abs(gap) > 1e-3  # the check below would be empty otherwise
            assert float(e.heatmap.sum()) == pytest.approx(gap, rel=0.03, abs=2e-4)


def test_integrated_gradients_black_baseline_is_exact_on_linear_model() -> None:
    images = random_images(1, seed=2)
    ig = IntegratedGradients(linear_model(), baseline="black", steps=4).explain(images, [0])[0][0]
    ixg = InputXGradient(linear_model()).explain(images, [0])[0][0]
    assert np.allclose(ig.heatmap, ixg.heatmap, atol=1e-5)
    assert ig.provenance["params"]["baseline"] == "black"


def test_results_do_not_depend_on_batching_and_targets_per_image() -> None:
    model = smooth_cnn(seed=3)
    images = random_images(3, seed=4)
    targets = [[0], [2, 1], [TargetInfo(column=1, kind="latent", name="unit 1")]]
    for make in (
        lambda b: IntegratedGradients(model, steps=8, batch_size=b),
        lambda b: SmoothGrad(model, n=5, seed=7, batch_size=b),
    ):
        small, large = make(3).explain(images, targets), make(200).explain(images, targets)
        for row_s, row_l, wanted in zip(small, large, targets, strict=True):
            assert len(row_s) == len(wanted)
            for a, b in zip(row_s, row_l, strict=True):
                assert np.allclose(a.heatmap, b.heatmap, rtol=1e-4, atol=1e-6)
    assert small[2][0].target.name == "unit 1"


def test_smoothgrad_of_a_linear_model_is_its_gradient() -> None:
    images = random_images(2, seed=5)
    raw = SmoothGrad(linear_model(), n=6, aggregate="raw", seed=1).explain(images, [0])
    square = SmoothGrad(linear_model(), n=6, aggregate="square", seed=1).explain(images, [1])
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[:6, :6] = 1 / 255
    assert np.allclose(raw[1][0].heatmap, expected, atol=1e-7)
    assert np.allclose(square[0][0].heatmap[10:, 10:], (2 / 255) ** 2, rtol=1e-4)
    assert raw[0][0].provenance["params"]["n"] == 6


def test_smoothgrad_noise_is_seeded() -> None:
    model, images = smooth_cnn(seed=6), random_images(1, seed=6)
    first = SmoothGrad(model, n=4, seed=3).explain(images, [0])[0][0].heatmap
    again = SmoothGrad(model, n=4, seed=3).explain(images, [0])[0][0].heatmap
    other = SmoothGrad(model, n=4, seed=4).explain(images, [0])[0][0].heatmap
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert first.min() >= 0


@pytest.mark.parametrize("nested", [False, True])
def test_gradcam_finds_the_red_square(nested: bool) -> None:
    model = red_detector(nested)
    image = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    image[..., 1] = 120
    image[0, 9:14, 3:8] = (250, 10, 10)
    explainer = GradCAM(model)
    assert explainer.layer == "red" == last_conv_layer(model)
    heat = explainer.explain(image, [0])[0][0].heatmap
    assert heat.shape == (SIZE, SIZE)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 9 <= y < 14 and 3 <= x < 8
    assert heat[:5].max() == 0


def test_layer_gradients_match_the_chain_rule() -> None:
    model = red_detector(nested=True)
    x = random_images(2, seed=8).astype(np.float32)
    acts, grads = layer_gradients(model, "red", x, np.array([[1.0], [2.0]], np.float32))
    assert acts.shape == grads.shape == (2, SIZE, SIZE, 1)
    # GAP then identity: d out / d A = weight / (h * w) everywhere.
    assert np.allclose(grads[0], 1 / SIZE**2) and np.allclose(grads[1], 2 / SIZE**2)
    expected = np.maximum(x @ np.array([1.0, -1.0, -1.0], np.float32) / 255, 0)
    assert np.allclose(acts[..., 0], expected, atol=1e-5)
    assert predict(model, x, 1)[:, 0] == pytest.approx(expected.mean(axis=(1, 2)), rel=1e-4)


def test_clear_errors() -> None:
    with pytest.raises(ExplainError) as err:
        GradCAM(linear_model())
    assert err.value.code == "explain.no_conv_layer"
    with pytest.raises(ExplainError) as err:
        GradCAM(smooth_cnn(), layer="nope").explain(random_images(1), [0])
    assert err.value.code == "explain.unknown_layer"
    with pytest.raises(ExplainError) as err:
        InputXGradient(linear_model()).explain(random_images(1), [7])
    assert err.value.code == "explain.unknown_target"
    with pytest.raises(ConfigError):
        IntegratedGradients(linear_model(), baseline="grey").explain(random_images(1), [0])
    with pytest.raises(ConfigError):
        SmoothGrad(linear_model(), aggregate="max")
    with pytest.raises(ConfigError):
        IntegratedGradients(linear_model(), steps=1, rule="trapezoid")
