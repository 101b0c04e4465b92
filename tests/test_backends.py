"""The gradient methods give the same answers on the JAX and PyTorch Keras backends.

The backend is fixed when Keras is imported, so each backend runs this file as a
script in a child process (``KERAS_BACKEND=jax`` / ``torch``); the child prints the
heatmaps of fixed models on fixed images as JSON and the test compares them with the
same computation in this process (TensorFlow unless told otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 12


def _seeded_weights(model: Any, seed: int) -> None:
    """Weights from numpy, so every backend builds the very same function."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in model.get_weights()])


def _models() -> tuple[Any, Any]:
    import keras

    # Zero initialisers: JAX compiles every random initialiser, which costs seconds.
    conv = {"activation": "tanh", "kernel_initializer": "zeros"}
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = keras.layers.Conv2D(4, 3, name="conv_a", **conv)(h)
    body = keras.Model(inputs, keras.layers.Conv2D(5, 3, name="conv_b", **conv)(h))
    outer_in = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(body(outer_in))
    cnn = keras.Model(outer_in, keras.layers.Dense(3, **conv)(pooled))
    _seeded_weights(cnn, 0)
    flat = keras.layers.Flatten()(outer_in)
    dense = keras.layers.Dense(2, use_bias=False, kernel_initializer="zeros")
    linear = keras.Model(outer_in, dense(flat))
    _seeded_weights(linear, 1)
    return cnn, linear


def run_checks() -> dict[str, Any]:
    """Heatmaps and predictions of every gradient method, JSON-friendly."""
    import keras

    from xmlcore.explain.gradient_methods import (
        GradCAM,
        InputXGradient,
        IntegratedGradients,
        SmoothGrad,
    )

    cnn, linear = _models()
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    explainers = {
        "input_x_gradient": InputXGradient(linear),
        "integrated_gradients": IntegratedGradients(cnn, baseline="mean", steps=16),
        "smoothgrad": SmoothGrad(cnn, n=3, seed=5),  # 6 rows: JAX pads the batch to 8
        "gradcam": GradCAM(cnn),
    }
    out: dict[str, Any] = {"backend": keras.backend.backend()}
    for name, explainer in explainers.items():
        result = explainer.explain(images, [[0, 1], [1]])
        out[name] = {
            "heatmaps": [e.heatmap.tolist() for row in result for e in row],
            "predictions": [e.prediction for row in result for e in row],
            "provenance": [e.provenance for row in result for e in row],
        }
    # Three images: a batch JAX pads to four (the padding must not leak into results).
    three = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    result = explainers["gradcam"].explain(three, [[0], [1], [2]])
    out["gradcam_three"] = {
        "heatmaps": [e.heatmap.tolist() for row in result for e in row],
        "predictions": [e.prediction for row in result for e in row],
        "provenance": [e.provenance for row in result for e in row],
    }
    out["gradcam_layer"] = explainers["gradcam"].params()["layer"]
    out["tensorflow_loaded"] = "tensorflow" in sys.modules
    return out


BACKENDS = ("jax", "torch")


@pytest.fixture(scope="module")
def children() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One child per installed backend, all started at once so they run side by side."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = {
        backend: subprocess.Popen(
            [sys.executable, __file__],
            env=dict(env, KERAS_BACKEND=backend),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in BACKENDS
        if importlib.util.find_spec(backend) is not None
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(children: dict[str, subprocess.Popen[str]]) -> dict[str, Any]:
    return run_checks()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_methods_agree_across_backends(
    backend: str, children: dict[str, subprocess.Popen[str]], reference: dict[str, Any]
) -> None:
    if backend not in children:
        pytest.skip(f"the {backend} package is not installed, so its Keras backend cannot run")
    if reference["backend"] == backend:
        pytest.skip(f"this process already runs the {backend} backend")
    stdout, stderr = children[backend].communicate(timeout=240)
    assert children[backend].returncode == 0, stderr[-3000:]
    other = json.loads(stdout.strip().splitlines()[-1])
    assert other["backend"] == backend
    assert not other["tensorflow_loaded"], f"the {backend} run imported tensorflow"
    assert other["gradcam_layer"] == reference["gradcam_layer"] == "conv_b"
    for method in (
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "gradcam",
        "gradcam_three",
    ):
        mine, theirs = reference[method], other[method]
        assert theirs["provenance"][0]["backend"] == backend
        assert np.allclose(theirs["predictions"], mine["predictions"], rtol=1e-4, atol=1e-5)
        for a, b in zip(theirs["heatmaps"], mine["heatmaps"], strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == (SIZE, SIZE)
            assert np.allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max()), method


if __name__ == "__main__":
    print(json.dumps(run_checks()))
