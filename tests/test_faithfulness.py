"""`xmlcore.faithfulness`: the AUCs every result can carry are `xmlcore.evaluate`'s curves,
over the explanation's superpixels or, for pixel maps, over blocks."""

import numpy as np
import pytest

from tests.test_lime_reference import make_images, pooled_model
from xmlcore.errors import ConfigError
from xmlcore.evaluate import deletion_auc, insertion_auc
from xmlcore.explain import KernelShapExplainer, OcclusionExplainer, SlicSegmenter
from xmlcore.faithfulness import score_faithfulness
from xmlcore.param_costs import EVALUATION_STEPS, evaluation_passes


def test_superpixel_and_pixel_maps_are_scored_as_the_bench_scores_them() -> None:
    images = make_images(2, seed=3)
    shap_rows = KernelShapExplainer(
        pooled_model, segmenter=SlicSegmenter(n_segments=16), n_samples=60
    ).explain(images, [0, 2])
    occlusion_rows = OcclusionExplainer(pooled_model, patch=8, stride=8).explain(images, [1])
    explained = [shap_rows[0] + occlusion_rows[0], shap_rows[1] + occlusion_rows[1]]
    scores = score_faithfulness(pooled_model, images, explained, ["insertion", "deletion"])
    for i, row in enumerate(explained):
        assert len(scores[i]) == 3
        for explanation, score in zip(row, scores[i], strict=True):
            by = "segments" if explanation.segments is not None else "blocks"
            options = {"steps": EVALUATION_STEPS, "by": by, "segments": explanation.segments}
            column = explanation.target.column
            expected = (
                deletion_auc(pooled_model, images[i], explanation.heatmap, column, **options),
                insertion_auc(pooled_model, images[i], explanation.heatmap, column, **options),
            )
            assert score["by"] == by and score["steps"] == EVALUATION_STEPS
            assert score["deletion_auc"] == pytest.approx(expected[0], abs=1e-6)
            assert score["insertion_auc"] == pytest.approx(expected[1], abs=1e-6)
            assert score["forward_passes"] == evaluation_passes(["deletion", "insertion"], 1)


def test_only_the_asked_curves_are_computed_and_unknown_ones_refused() -> None:
    images = make_images(1)
    row = KernelShapExplainer(pooled_model, n_samples=20).explain(images, [0])
    (score,) = score_faithfulness(pooled_model, images, row, ["deletion"])[0]
    assert "insertion_auc" not in score and score["forward_passes"] == EVALUATION_STEPS + 2
    with pytest.raises(ConfigError) as refused:
        score_faithfulness(pooled_model, images, row, ["deletion", "sufficiency"])
    assert refused.value.code == "config.bad_evaluate"


def test_a_flat_output_has_no_auc() -> None:
    images = make_images(1)

    def flat(batch: np.ndarray) -> np.ndarray:
        return np.ones((len(batch), 2))

    row = KernelShapExplainer(flat, n_samples=20).explain(images, [1])
    (score,) = score_faithfulness(flat, images, row, ["deletion", "insertion"])[0]
    assert score["deletion_auc"] is None and score["insertion_auc"] is None


def test_the_client_reads_and_words_the_job_means() -> None:
    from xmlx.client import JobStatus
    from xmlx.client_display import describe_faithfulness

    means = {"deletion_auc": 0.2141, "insertion_auc": 0.6, "stability@5": 0.9}
    body = {"id": "job_1", "state": "succeeded", "progress": {"total": 2}, "metrics": means}
    job = JobStatus.from_json(body)
    assert describe_faithfulness(job.metrics) == (
        "deletion AUC 0.214 (lower is better) · insertion AUC 0.600 (higher is better)"
    )
    assert describe_faithfulness({"stability@5": 0.9}) is None
