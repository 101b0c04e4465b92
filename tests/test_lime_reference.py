"""The fast engine against the real ``lime`` package: same masks, same images, same fit."""

import os

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
lime_base = pytest.importorskip("lime.lime_base")
lime_image = pytest.importorskip("lime.lime_image")

from sklearn.metrics import pairwise_distances  # noqa: E402

from xmlcore.explain.lime import LimeExplainer, image_seed  # noqa: E402
from xmlcore.explain.sampling import (  # noqa: E402
    cosine_distances_to_ones,
    draw_masks,
    exponential_kernel,
    fill_image,
    perturb_into,
)
from xmlcore.explain.segmentation import QuickshiftSegmenter, SlicSegmenter  # noqa: E402
from xmlcore.explain.surrogate import fit_weighted_ridge  # noqa: E402

H = W = 40
TOL = 1e-6


def make_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    images = []
    for i in range(n):
        base = np.stack([xx * 5 + 40 * i, yy * 5 + 20 * i, (xx - yy) * 3 + 60 * i], axis=-1)
        images.append((base % 210) + 20 + rng.normal(0, 10, (H, W, 3)))
    return np.clip(np.array(images), 0, 255).astype(np.uint8)


PROJECTION = np.random.default_rng(42).normal(size=(H // 4 * W // 4 * 3, 5))


def pooled_model(batch: np.ndarray) -> np.ndarray:
    """A fixed non-linear function of 4x4-pooled pixels: 5 outputs in (-1, 1)."""
    x = batch.astype(np.float64).reshape(len(batch), H // 4, 4, W // 4, 4, 3).mean(axis=(2, 4))
    return np.tanh(x.reshape(len(batch), -1) / 255.0 @ PROJECTION / 8.0)


def assert_same(fast, ref):
    for row_f, row_r in zip(fast, ref, strict=True):
        for f, r in zip(row_f, row_r, strict=True):
            np.testing.assert_array_equal(f.segments, r.segments)
            np.testing.assert_allclose(f.segment_weights, r.segment_weights, atol=TOL, rtol=0)
            assert f.intercept == pytest.approx(r.intercept, abs=TOL)
            assert f.score == pytest.approx(r.score, abs=TOL)
            assert f.local_prediction == pytest.approx(r.local_prediction, abs=TOL)
            assert f.top_segments == r.top_segments
            assert r.provenance["engine"] == "reference"
            # stability@k is refitted on the same samples with the same bootstrap draws
            assert f.metrics == pytest.approx(r.metrics, abs=TOL)
            assert f.provenance["sampler"] == r.provenance["sampler"] == "lime"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sampler": "lime", "top_k": 3},
        {"fill": (0, 0, 0), "alpha": 0.5},
        {"fill": 128, "kernel_width": 0.4, "segmenter": QuickshiftSegmenter(kernel_size=2)},
    ],
)
def test_fast_engine_equals_lime_end_to_end(options):
    images = make_images(2)
    targets = [[0, 3], [4, 1, 2]]
    common = {"num_samples": 300, "batch_size": 50, "seed": 5, **options}
    fast = LimeExplainer(pooled_model, engine="fast", **common).explain(images, targets)
    ref = LimeExplainer(pooled_model, engine="reference", **common).explain(images, targets)
    assert_same(fast, ref)


def test_masks_and_perturbed_images_equal_limes():
    """lime's ``data_labels`` with a pixel-echo classifier returns its perturbed images."""
    image = make_images(1)[0]
    segments = SlicSegmenter()(image)
    k = int(segments.max()) + 1
    seed = image_seed(0, 0)
    for fill in ["mean", (7, 8, 9)]:
        fudged = fill_image(image, segments, fill)
        lime_fudged = image.copy()
        if fill == "mean":
            for s in range(k):
                lime_fudged[segments == s] = image[segments == s].mean(axis=0)
        else:
            lime_fudged[:] = fill
        np.testing.assert_array_equal(fudged, lime_fudged)
        explainer = lime_image.LimeImageExplainer(random_state=seed)
        data, echoed = explainer.data_labels(
            image, lime_fudged, segments, lambda b: b.reshape(len(b), -1), 40, batch_size=16
        )
        masks = draw_masks(np.random.RandomState(seed), 40, k, first=True)
        np.testing.assert_array_equal(data, masks)
        ours = np.empty((40, H, W, 3), np.uint8)
        perturb_into(ours, image, fudged, segments, masks)
        np.testing.assert_array_equal(echoed, ours.reshape(40, -1))


@pytest.mark.parametrize("n_segments", [4, 30])
def test_surrogate_equals_lime_base_on_the_same_data(n_segments):
    """Same data, labels and distances into ``LimeBase.explain_instance_with_data``
    (default ``feature_selection='auto'`` with ``num_features=K`` keeps every feature,
    through forward selection for K <= 6 and highest weights above)."""
    rng = np.random.RandomState(3)
    data = draw_masks(rng, 500, n_segments, first=True)
    labels = np.tanh(data @ rng.normal(size=(n_segments, 3)) + 0.1 * rng.normal(size=(500, 3)))
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
    np.testing.assert_allclose(cosine_distances_to_ones(data), distances, atol=1e-12)
    weights = exponential_kernel(distances, 0.25)
    fit = fit_weighted_ridge(data, labels, weights, alpha=1.0)
    base = lime_base.LimeBase(lambda d: np.sqrt(np.exp(-(d**2) / 0.25**2)), random_state=0)
    for label in range(3):
        intercept, exp, score, local = base.explain_instance_with_data(
            data, labels, distances, label, n_segments
        )
        coef = np.zeros(n_segments)
        for feature, weight in exp:
            coef[feature] = weight
        np.testing.assert_allclose(fit.coef[:, label], coef, atol=TOL, rtol=0)
        assert fit.intercept[label] == pytest.approx(intercept, abs=TOL)
        assert fit.score[label] == pytest.approx(score, abs=TOL)
        assert fit.local_prediction[label] == pytest.approx(local[0], abs=TOL)


def test_keras_model_fast_equals_lime():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((H, W, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(6, 3, strides=2, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="sigmoid"),
        ]
    )
    images = make_images(2, seed=9)
    common = {"num_samples": 200, "batch_size": 64, "seed": 11}
    fast = LimeExplainer(model.predict_on_batch, **common).explain(images, [0, 3])
    ref = LimeExplainer(model.predict_on_batch, engine="reference", **common).explain(
        images, [0, 3]
    )
    assert_same(fast, ref)


def test_a_stream_on_either_engine_equals_explaining_each_chunk():
    """``explain_stream`` is ``explain`` chunk by chunk, on the reference engine too
    (which runs ``lime`` per image and has nothing to overlap)."""
    images = make_images(3)
    chunks = [(images[:1], [0, 2]), (images[1:], [1])]
    common = {"segmenter": SlicSegmenter(n_segments=12), "num_samples": 40, "batch_size": 16}
    fast = list(LimeExplainer(pooled_model, **common).explain_stream(chunks))
    reference = LimeExplainer(pooled_model, engine="reference", **common)
    streamed = list(reference.explain_stream(chunks))
    assert len(streamed) == len(fast) == 2
    for got, fast_chunk, (chunk, targets) in zip(streamed, fast, chunks, strict=True):
        want = reference.explain(chunk, targets)
        for row_got, row_want in zip(got, want, strict=True):
            for g, w in zip(row_got, row_want, strict=True):
                np.testing.assert_array_equal(g.segment_weights, w.segment_weights)
        assert_same(fast_chunk, got)
