"""LIME's mask samplers and the stability@k every LIME result carries."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from scipy.stats import binom

from xmlcore.errors import ConfigError
from xmlcore.explain import AdaptiveSampling, LimeExplainer
from xmlcore.explain.samplers import SAMPLERS, draw_sampler_masks, resampling_groups
from xmlcore.explain.sampling import draw_masks
from xmlcore.explain.stability import bootstrap_stability
from xmlcore.params import LimeParams, params_json_schemas, parse_params
from xmlcore.result_metrics import add_metrics, item_metrics, mean_metrics

SIDE = 32
GRID = 4  # a 4 x 4 grid of 8-pixel squares: 16 segments with known ids


class GridSegmenter:
    def __call__(self, image: np.ndarray) -> np.ndarray:
        rows, cols = np.indices(image.shape[:2]) // (SIDE // GRID)
        return (rows * GRID + cols).astype(np.int32)

    def describe(self) -> dict[str, str]:
        return {"name": "grid"}


IMAGES = np.full((3, SIDE, SIDE, 3), 200, np.uint8)
# Segment s is worth WEIGHTS[s] when shown (fill 0 hides it): a clear top 5 (ids 0-4).
WEIGHTS = np.array([10.0, 9.0, 8.0, 7.0, 6.0] + [0.1] * 11)


def clear_model(batch: np.ndarray) -> np.ndarray:
    shown = batch[:, :: SIDE // GRID, :: SIDE // GRID, 0].reshape(len(batch), -1) / 200.0
    return (shown @ WEIGHTS)[:, None]


def noisy_model(batch: np.ndarray) -> np.ndarray:
    """The clear model buried under a pseudo-random function of the pixels."""
    checksum = batch.reshape(len(batch), -1).astype(np.float64) @ np.linspace(1, 2, SIDE**2 * 3)
    return clear_model(batch) * 0.002 + (np.sin(checksum * 12.9898) * 43758.5453 % 1.0)[:, None]


def explain(predict, **kwargs):
    options = {"segmenter": GridSegmenter(), "fill": 0, "num_samples": 120, **kwargs}
    return LimeExplainer(predict, **options).explain(IMAGES, [0])


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s.startswith("antithetic")])
def test_antithetic_rows_come_as_a_mask_and_its_complement(sampler: str) -> None:
    masks = draw_sampler_masks(sampler, np.random.RandomState(0), 101, 16, first=True)
    assert masks.shape == (101, 16) and masks.dtype == np.uint8
    assert (masks[0] == 1).all()
    np.testing.assert_array_equal(masks[1::2], 1 - masks[2::2])


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s.endswith("stratified")])
def test_stratified_counts_cover_every_count_in_proportion(sampler: str) -> None:
    n, k = 640, 6
    masks = draw_sampler_masks(sampler, np.random.RandomState(1), n, k, first=False)
    found = np.bincount(masks.sum(axis=1), minlength=k + 1)
    expected = n * binom.pmf(np.arange(k + 1), k, 0.5)
    assert (found > 0).all()  # every count from 0 to k hidden segments
    # one stratum per row: each count gets its share to within the two border strata
    assert np.abs(found - expected).max() <= 2


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_limes_marginals_and_repeats_with_its_seed(sampler: str) -> None:
    draw = lambda seed: draw_sampler_masks(  # noqa: E731
        sampler, np.random.RandomState(seed), 4001, 12, first=True
    )
    masks = draw(7)
    assert set(np.unique(masks)) == {0, 1}
    assert np.abs(masks[1:].mean(axis=0) - 0.5).max() < 0.04
    np.testing.assert_array_equal(masks, draw(7))
    assert not np.array_equal(masks, draw(8))


def test_the_lime_sampler_is_limes_draw() -> None:
    ours = draw_sampler_masks("lime", np.random.RandomState(3), 50, 9, first=True)
    np.testing.assert_array_equal(ours, draw_masks(np.random.RandomState(3), 50, 9, first=True))
    assert get_args(LimeParams.model_fields["sampler"].annotation) == SAMPLERS


def test_resampling_groups_keep_pairs_together() -> None:
    groups = resampling_groups("antithetic", [5, 4])
    assert groups.tolist() == [-1, 0, 0, 1, 1, 2, 2, 3, 3]
    plain = resampling_groups("stratified", [3, 2])
    assert plain.tolist() == [-1, 0, 1, 2, 3]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_costs_exactly_its_forward_passes(sampler: str) -> None:
    seen: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return clear_model(batch)

    rows = explain(counting, num_samples=101, sampler=sampler)
    assert sum(seen) == len(IMAGES) * 101  # the originals, then 100 samples each
    assert rows[0][0].provenance["sampler"] == sampler
    assert set(rows[0][0].top_segments) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_stability_is_high_for_a_clear_signal_and_low_for_noise(sampler: str) -> None:
    clear = explain(clear_model, sampler=sampler, top_k=3)
    noisy = explain(noisy_model, sampler=sampler, top_k=3)
    for rows in (clear, noisy):
        for row in rows:
            assert set(row[0].metrics) == {"stability@3", "stability@5"}
            assert all(0.0 <= v <= 1.0 for v in row[0].metrics.values())
            assert row[0].to_json()["metrics"] == pytest.approx(row[0].metrics, abs=1e-6)
    assert min(r[0].metrics["stability@5"] for r in clear) == 1.0
    assert max(r[0].metrics["stability@5"] for r in noisy) < 0.8


def test_stability_needs_no_forward_pass_and_does_not_change_the_result() -> None:
    X = np.random.default_rng(0).integers(0, 2, (200, 10)).astype(float)
    Y = X @ np.arange(10.0)[:, None]
    groups = np.arange(200)
    found = bootstrap_stability(X, Y, np.ones(200), groups, alpha=1.0, ks=(3, 10), seed=1)
    assert found[3].tolist() == [1.0] and found[10].tolist() == [1.0]  # k = K: trivially
    a, b = explain(noisy_model), explain(noisy_model)
    assert [r[0].metrics for r in a] == [r[0].metrics for r in b]  # seeded


def test_adaptive_stability_stops_a_clear_image_early_and_a_noisy_one_late() -> None:
    rule = AdaptiveSampling(criterion="stability", min_samples=40, batch=40, max_samples=400)
    clear = explain(clear_model, adaptive=rule, sampler="antithetic", num_samples=400)
    noisy = explain(noisy_model, adaptive=rule, sampler="antithetic", num_samples=400)
    assert max(r[0].num_samples for r in clear) <= 80
    assert min(r[0].num_samples for r in noisy) == 400  # never stable: the cap


def test_bad_samplers_are_refused_with_a_code() -> None:
    with pytest.raises(ConfigError) as bad:
        LimeExplainer(clear_model, sampler="sobol")
    assert bad.value.code == "config.lime"
    with pytest.raises(ConfigError) as reference:
        LimeExplainer(clear_model, sampler="antithetic", engine="reference")
    assert reference.value.code == "config.engine"
    for params in ({"sampler": "sobol"}, {"sampler": "stratified", "engine": "reference"}):
        with pytest.raises(ConfigError) as refused:
            parse_params("lime", params)
        assert refused.value.code == "config.bad_parameter"
        assert "sampler" in refused.value.message
    assert parse_params("lime", {"sampler": "antithetic_stratified"}).sampler == (
        "antithetic_stratified"
    )
    schema = params_json_schemas()["lime"]["properties"]["sampler"]
    assert schema["enum"] == list(SAMPLERS) and schema["default"] == "lime"


def test_a_jobs_metrics_are_the_means_of_its_items() -> None:
    first = {"explanations": [{"metrics": {"stability@5": 0.6}}, {"metrics": {"stability@5": 1}}]}
    second = {"explanations": [{"metrics": {"stability@5": 0.4, "x": float("nan")}}]}
    assert item_metrics(first) == {"stability@5": 0.8}
    assert item_metrics({"top_labels": []}) == {}
    sums = add_metrics(add_metrics(None, item_metrics(first)), item_metrics(second))
    assert mean_metrics(sums) == {"stability@5": 0.6}
    assert mean_metrics(None) == {}
