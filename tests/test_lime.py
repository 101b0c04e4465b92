"""The fast LIME engine: correct attributions, batching invariance, adaptive stopping, errors."""

import numpy as np
import pytest

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.adaptive import AdaptiveSampling, StabilityTracker
from xmlcore.explain.lime import LimeExplainer
from xmlcore.explain.sampling import fill_image, perturb_into
from xmlcore.explain.segmentation import FelzenszwalbSegmenter, SlicSegmenter
from xmlcore.explain.surrogate import fit_weighted_ridge

H = W = 48


def make_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with different offsets plus noise: SLIC finds ~30 segments."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    images = []
    for i in range(n):
        base = np.stack([xx * 4 + 30 * i, yy * 4 + 50 * i, (xx + yy) * 2 + 70 * i], axis=-1)
        images.append((base % 200) + 20 + rng.normal(0, 8, (H, W, 3)))
    return np.clip(np.array(images), 0, 255).astype(np.uint8)


def quadrant_model(batch: np.ndarray) -> np.ndarray:
    """Four outputs: mean red of the top-left quadrant, mean blue of the bottom-right one,
    overall brightness, and a non-linear mix of the first two (in 0..1)."""
    x = batch.astype(np.float64) / 255.0
    red_tl = x[:, : H // 2, : W // 2, 0].mean(axis=(1, 2))
    blue_br = x[:, H // 2 :, W // 2 :, 2].mean(axis=(1, 2))
    bright = x.mean(axis=(1, 2, 3))
    return np.stack([red_tl, blue_br, bright, np.tanh(3 * red_tl * blue_br)], axis=1)


def test_weights_point_at_the_quadrant_the_output_reads():
    images = make_images(2)
    explainer = LimeExplainer(quadrant_model, fill=(0, 0, 0), num_samples=400, seed=1)
    result = explainer.explain(images, [0, 1])
    for per_image in result:
        tl, br = per_image
        segments = tl.segments
        yy, xx = np.mgrid[0:H, 0:W]
        in_tl = np.array(
            [
                ((yy < H // 2) & (xx < W // 2))[segments == s].mean()
                for s in range(segments.max() + 1)
            ]
        )
        in_br = np.array(
            [
                ((yy >= H // 2) & (xx >= W // 2))[segments == s].mean()
                for s in range(segments.max() + 1)
            ]
        )
        assert all(in_tl[s] > 0.5 for s in tl.top_segments)
        assert all(in_br[s] > 0.5 for s in br.top_segments)
        assert np.abs(tl.segment_weights[in_tl == 0]).max() < 0.2 * tl.segment_weights.max()
        assert tl.score > 0.9


def test_explanation_fields_are_consistent():
    images = make_images(2)
    explainer = LimeExplainer(quadrant_model, num_samples=200, top_k=4, seed=0)
    result = explainer.explain(images, [2, 3])
    assert [len(r) for r in result] == [2, 2]
    originals = quadrant_model(images)
    for i, per_image in enumerate(result):
        for e, column in zip(per_image, [2, 3], strict=True):
            k = int(e.segments.max()) + 1
            assert e.segment_weights.shape == (k,)
            assert e.heatmap.dtype == np.float32 and e.heatmap.shape == (H, W)
            np.testing.assert_allclose(e.heatmap, e.segment_weights[e.segments], rtol=1e-6)
            assert e.top_segments == list(np.argsort(-e.segment_weights, kind="stable")[:4])
            assert e.prediction == pytest.approx(originals[i, column])
            assert e.local_prediction == pytest.approx(e.intercept + e.segment_weights.sum())
            assert e.num_samples == 200 and e.image_index == i and e.target.column == column
            prov = e.provenance
            assert prov["engine"] == "fast" and prov["segmenter"]["name"] == "slic"
            assert prov["num_segments"] == k and len(prov["segment_hash"]) == 16
            assert prov["versions"]["lime"] and prov["versions"]["numpy"]
            assert e.to_json()["segment_weights"] == pytest.approx(list(e.segment_weights))


def test_seeded_runs_repeat_and_do_not_depend_on_batching():
    images = make_images(3)

    def run(batch, **kw):
        return LimeExplainer(quadrant_model, num_samples=150, seed=7, **kw).explain(batch, [0, 3])

    full = run(images, batch_size=64)
    again = run(images, batch_size=13)
    other_first = run(np.stack([images[2], images[1]]), batch_size=300)
    for a, b in zip(full, again, strict=True):
        for ea, eb in zip(a, b, strict=True):
            np.testing.assert_allclose(ea.segment_weights, eb.segment_weights, atol=1e-12)
    np.testing.assert_allclose(
        full[1][0].segment_weights, other_first[1][0].segment_weights, atol=1e-12
    )
    reseeded = LimeExplainer(quadrant_model, num_samples=150, seed=8).explain(images[:1], [0])
    assert not np.allclose(reseeded[0][0].segment_weights, full[0][0].segment_weights)


def test_many_targets_at_once_equal_one_at_a_time():
    images = make_images(1)
    explainer = LimeExplainer(quadrant_model, num_samples=150, seed=3)
    together = explainer.explain(images, [3, 0, 1])[0]
    for e in together:
        alone = explainer.explain(images, [e.target.column])[0][0]
        np.testing.assert_allclose(e.segment_weights, alone.segment_weights, atol=1e-12)
        assert e.score == pytest.approx(alone.score)


def test_per_image_target_lists():
    images = make_images(2)
    result = LimeExplainer(quadrant_model, num_samples=50).explain(images, [[0], [1, 2]])
    assert [[e.target.column for e in r] for r in result] == [[0], [1, 2]]


def test_perturbation_matches_a_per_sample_loop():
    image = make_images(1)[0]
    segments = SlicSegmenter()(image)
    k = int(segments.max()) + 1
    masks = np.random.default_rng(0).integers(0, 2, (9, k)).astype(np.uint8)
    for fill in ["mean", (10, 20, 30)]:
        fudged = fill_image(image, segments, fill)
        out = np.empty((9, H, W, 3), np.uint8)
        perturb_into(out, image, fudged, segments, masks)
        for row, got in zip(masks, out, strict=True):
            expected = image.copy()
            for s in np.flatnonzero(row == 0):
                expected[segments == s] = fudged[segments == s]
            np.testing.assert_array_equal(got, expected)
    means = fill_image(image, segments, "mean")
    s0 = segments == 0
    np.testing.assert_array_equal(means[s0][0], np.floor(image[s0].mean(axis=0)))


def test_one_segment_image_gets_one_weight():
    """A uniform image is one superpixel: one weight, the (ridge-shrunk) effect of hiding
    the whole image; hidden rows are at cosine distance 1, so the kernel gives them
    weight exp(-8) and alpha=1 shrinks the weight well below the full drop."""
    image = np.full((1, H, W, 3), 180, dtype=np.uint8)
    explainer = LimeExplainer(
        quadrant_model, segmenter=FelzenszwalbSegmenter(), fill=(0, 0, 0), num_samples=60
    )
    e = explainer.explain(image, [2])[0][0]
    assert e.segment_weights.shape == (1,) and e.top_segments == [0]
    drop = quadrant_model(image)[0, 2]
    assert 0 < e.segment_weights[0] < drop
    assert e.intercept + e.segment_weights[0] == pytest.approx(e.local_prediction)
    assert np.all(e.heatmap == np.float32(e.segment_weights[0]))


def test_surrogate_of_a_constant_output_is_flat():
    X = np.random.default_rng(0).integers(0, 2, (50, 6))
    fit = fit_weighted_ridge(X, np.full((50, 2), 0.5), np.ones(50))
    np.testing.assert_allclose(fit.coef, 0, atol=1e-12)
    np.testing.assert_allclose(fit.intercept, 0.5)
    np.testing.assert_allclose(fit.score, 1.0)


@pytest.mark.parametrize(("criterion", "earliest"), [("separation", 100), ("set", 200)])
def test_adaptive_sampling_stops_early_on_a_clear_signal(criterion, earliest):
    images = make_images(3)
    rule = AdaptiveSampling(batch=50, min_samples=100, top_k=3, patience=2, criterion=criterion)
    explainer = LimeExplainer(
        quadrant_model, fill=(0, 0, 0), num_samples=1000, adaptive=rule, seed=0
    )
    result = explainer.explain(images, [0, 1])
    full = LimeExplainer(quadrant_model, fill=(0, 0, 0), num_samples=1000, seed=0).explain(
        images, [0, 1]
    )
    for adaptive_row, full_row in zip(result, full, strict=True):
        used = adaptive_row[0].num_samples
        assert earliest <= used < 1000 and (used - 100) % 50 == 0
        assert all(e.num_samples == used for e in adaptive_row)
        assert adaptive_row[0].provenance["adaptive"]["batch"] == 50
        for a, f in zip(adaptive_row, full_row, strict=True):
            assert set(a.top_segments[:3]) == set(f.top_segments[:3])


def test_adaptive_sampling_respects_max_samples():
    rule = AdaptiveSampling(batch=30, min_samples=40, max_samples=100, patience=50)
    result = LimeExplainer(quadrant_model, adaptive=rule).explain(make_images(1), [0])
    assert result[0][0].num_samples == 100


def test_stability_tracker_counts_unchanged_rounds():
    rule = AdaptiveSampling(batch=10, min_samples=20, patience=2, criterion="ranking")
    tracker = StabilityTracker(rule, 100)
    assert tracker.next_round_size(0) == 20 and tracker.next_round_size(95) == 5
    a, b = np.array([[1, 2, 3]]), np.array([[2, 1, 3]])
    assert [tracker.update(r, 50) for r in (a, a, b, b)] == [False, False, False, False]
    assert tracker.update(b, 60) is True
    assert StabilityTracker(AdaptiveSampling(), 100).update(a, 100) is True


def test_set_criterion_ignores_order_within_the_top_k():
    rule = AdaptiveSampling(patience=2, criterion="set")
    a, b, c = np.array([[1, 2, 3]]), np.array([[2, 1, 3]]), np.array([[2, 1, 4]])
    tracker = StabilityTracker(rule, 1000)
    assert [tracker.update(r, 300) for r in (a, b, a)] == [False, False, True]
    tracker = StabilityTracker(rule, 1000)
    assert [tracker.update(r, 300) for r in (a, c, b, c)] == [False, False, False, False]


def test_separation_measures_how_clearly_the_top_set_stands_out():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 2, (400, 10))
    planted = X @ np.array([3.0, 2.5, 0, 0, 0, 0, 0, 0, 0, 0])
    Y = np.stack([planted, np.zeros(400)], axis=1) + rng.normal(0, 0.5, (400, 2))
    fit = fit_weighted_ridge(X, Y, np.ones(400))
    clear, noise = fit.separation(2)
    assert clear > 10 and noise < 2
    assert fit.coef_se.shape == (10, 2) and np.all(fit.coef_se > 0)
    assert np.isinf(fit.separation(10)).all()
    rule = AdaptiveSampling(criterion="separation", z=2.0)
    tracker = StabilityTracker(rule, 1000)
    assert tracker.update(fit.top_segments(2), 200, float(noise)) is False
    assert tracker.update(fit.top_segments(2), 300, float(clear)) is True


def test_keras_model_as_predict_fn():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((H, W, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    images = make_images(2)
    result = LimeExplainer(model.predict_on_batch, num_samples=100, batch_size=64).explain(
        images, [0, 2]
    )
    originals = np.asarray(model.predict_on_batch(images))
    assert result[1][1].prediction == pytest.approx(float(originals[1, 2]), rel=1e-4, abs=1e-6)
    assert all(np.isfinite(e.segment_weights).all() for row in result for e in row)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"num_samples": 1}, "config.lime"),
        ({"batch_size": 0}, "config.lime"),
        ({"kernel_width": 0}, "config.lime"),
        ({"engine": "turbo"}, "config.lime"),
        ({"engine": "reference", "adaptive": AdaptiveSampling()}, "config.engine"),
    ],
)
def test_bad_configuration_is_refused(kwargs, code):
    with pytest.raises(ConfigError) as err:
        LimeExplainer(quadrant_model, **kwargs)
    assert err.value.code == code


@pytest.mark.parametrize(
    "kwargs", [{"min_samples": 100, "max_samples": 50}, {"criterion": "order"}, {"batch": 0}]
)
def test_bad_adaptive_rule_is_refused(kwargs):
    with pytest.raises(ConfigError) as err:
        AdaptiveSampling(**kwargs)
    assert err.value.code == "config.adaptive"


def test_bad_input_is_refused_with_a_code():
    explainer = LimeExplainer(quadrant_model, num_samples=20)
    images = make_images(2)
    cases = [
        (lambda: explainer.explain(images, [7]), "explain.unknown_target"),
        (lambda: explainer.explain([images[0], images[1, :40]], [0]), "explain.mismatched_sizes"),
        (lambda: explainer.explain(images.astype(np.float32) * 2, [0]), "explain.bad_images"),
        (lambda: explainer.explain(images[..., :2], [0]), "explain.bad_images"),
        (lambda: explainer.explain(images, []), "explain.no_targets"),
        (
            lambda: LimeExplainer(lambda b: b[:1, 0, 0], num_samples=5).explain(images, [0]),
            "explain.bad_predict_fn",
        ),
        (
            lambda: LimeExplainer(quadrant_model, fill="blur").explain(images, [0]),
            "explain.bad_fill",
        ),
    ]
    for call, code in cases:
        with pytest.raises(ExplainError) as err:
            call()
        assert err.value.code == code


def test_float_images_in_range_are_accepted_as_pixels():
    images = make_images(1)
    explainer = LimeExplainer(quadrant_model, num_samples=30)
    as_uint8 = explainer.explain(images, [0])[0][0]
    as_float = explainer.explain(images.astype(np.float32), [0])[0][0]
    np.testing.assert_allclose(as_uint8.segment_weights, as_float.segment_weights)
