"""KernelSHAP over superpixels against the real ``shap`` package, and its properties."""

import itertools
import math
import warnings

import numpy as np
import pytest

shap = pytest.importorskip("shap")

from tests.test_lime_reference import make_images, pooled_model  # noqa: E402
from xmlcore.explain.kernel_shap import KernelShapExplainer  # noqa: E402
from xmlcore.explain.lime import image_seed  # noqa: E402
from xmlcore.explain.sampling import fill_image  # noqa: E402
from xmlcore.explain.segmentation import SlicSegmenter  # noqa: E402
from xmlcore.explain.shapley import shapley_coalitions  # noqa: E402

TOL = 1e-6


def perturbed(image: np.ndarray, fill: np.ndarray, segments: np.ndarray, z: np.ndarray):
    """The images of coalitions ``z`` (rows of 0/1 over the segments)."""
    keep = np.asarray(z, dtype=bool)[:, segments][..., None]
    return np.where(keep, image[None], fill[None])


def shap_package_values(image, segmenter, fill, n_samples, seed):
    """The real ``KernelExplainer`` on a function of the coalition vector: background =
    the all-absent coalition, x = the all-present one (l1_reg=0: no feature selection)."""
    segments = segmenter(image)
    background = fill_image(image, segments, fill)
    k = int(segments.max()) + 1

    def f(z):
        return pooled_model(perturbed(image, background, segments, z))

    explainer = shap.KernelExplainer(f, np.zeros((1, k)))
    np.random.seed(seed)  # shap draws from numpy's global RandomState
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = explainer.shap_values(np.ones((1, k)), nsamples=n_samples, l1_reg=0, silent=True)
    return np.asarray(values)[0], explainer  # (K, outputs)


@pytest.mark.parametrize(
    ("n_segments", "n_samples", "fill"),
    [(30, 150, "mean"), (12, 300, 0), (6, 1000, (200, 10, 90))],
    ids=["sampled", "enumerated-then-sampled", "fully-enumerated"],
)
def test_equals_the_shap_package(n_segments, n_samples, fill):
    images = make_images(2, seed=4)
    segmenter = SlicSegmenter(n_segments=n_segments)
    ours = KernelShapExplainer(
        pooled_model, segmenter=segmenter, n_samples=n_samples, fill=fill, batch_size=64, seed=5
    ).explain(images, [0, 2, 4])
    for i, image in enumerate(images):
        reference, explainer = shap_package_values(
            image, segmenter, fill, n_samples, image_seed(5, i)
        )
        for j, column in enumerate((0, 2, 4)):
            np.testing.assert_allclose(
                ours[i][j].segment_weights, reference[:, column], atol=TOL, rtol=0
            )
            assert ours[i][j].intercept == pytest.approx(explainer.expected_value[column], abs=TOL)
        # Same coalitions and kernel weights, not only the same values.
        rng = np.random.RandomState(image_seed(5, i))
        coalitions = shapley_coalitions(len(reference), n_samples, rng)
        added = explainer.nsamplesAdded
        assert ours[i][0].num_samples == added
        np.testing.assert_array_equal(coalitions.masks, explainer.maskMatrix[:added])
        np.testing.assert_allclose(coalitions.weights, explainer.kernelWeights[:added], rtol=1e-12)


def test_efficiency_sums_to_the_prediction_minus_the_background():
    images = make_images(3, seed=1)
    result = KernelShapExplainer(
        pooled_model, segmenter=SlicSegmenter(n_segments=25), n_samples=80, seed=None
    ).explain(images, [1, 3])
    for row in result:
        for e in row:
            assert e.segment_weights.sum() == pytest.approx(e.prediction - e.intercept, abs=1e-9)
            assert e.local_prediction == pytest.approx(e.prediction, abs=1e-9)
            assert e.provenance["forward_passes"] == e.num_samples + 2
    hidden = fill_image(images[0], result[0][0].segments, "mean")
    assert result[0][0].intercept == pytest.approx(pooled_model(hidden[None])[0, 1], abs=1e-12)


def exact_shapley(value, k: int) -> np.ndarray:
    """Shapley values by their definition (every coalition), ``(k, outputs)``."""
    phi = 0.0
    cache = {}
    for z in itertools.product((0, 1), repeat=k):
        cache[z] = value(np.array([z]))[0]
    phi = np.zeros((k, len(cache[(0,) * k])))
    for j in range(k):
        for z in cache:
            if z[j]:
                continue
            s = sum(z)
            weight = math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k)
            with_j = (*z[:j], 1, *z[j + 1 :])
            phi[j] += weight * (cache[with_j] - cache[z])
    return phi


def test_full_enumeration_gives_the_exact_shapley_values():
    image = make_images(1, seed=2)[0]
    segmenter = SlicSegmenter(n_segments=6)
    segments = segmenter(image)
    k = int(segments.max()) + 1
    fill = fill_image(image, segments, "mean")
    explained = KernelShapExplainer(pooled_model, segmenter=segmenter, n_samples=5000).explain(
        image[None], [0, 1]
    )
    truth = exact_shapley(lambda z: pooled_model(perturbed(image, fill, segments, z)), k)
    for j in range(2):
        np.testing.assert_allclose(explained[0][j].segment_weights, truth[:, j], atol=1e-9)
    assert explained[0][0].num_samples == 2**k - 2
