"""Target resolution: latent units, label names and top-k labels to output columns."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from xmlcore.errors import ConfigError, ExplainError
from xmlcore.explain.result import TargetInfo
from xmlcore.explain.targets import LabelTarget, LatentUnit, TopKLabels, resolve_targets

VOCABULARY = ("basil", "chicken", "garlic", "onion", "tomato")


@dataclass
class ColourScoredModel:
    """A plain two-step-shaped holder: label scores are a fixed linear map of mean colour."""

    vocabulary: tuple[str, ...]
    latent_dim: int
    colour_to_label: np.ndarray
    label_hierarchy: Any = None

    def hierarchy(self) -> Any:
        return self.label_hierarchy

    def predict_scores(self, images: np.ndarray) -> np.ndarray:
        return images.mean(axis=(1, 2)) @ self.colour_to_label


def make_model(hierarchy: Any = None) -> ColourScoredModel:
    # red -> tomato > basil, green -> basil > onion, blue -> garlic
    mapping = np.array(
        [[0.5, 0.0, 0.0, 0.1, 1.0], [1.0, 0.0, 0.0, 0.6, 0.0], [0.0, 0.2, 1.0, 0.0, 0.0]]
    )
    return ColourScoredModel(VOCABULARY, 3, mapping, hierarchy)


def solid(*colours: tuple[int, int, int]) -> np.ndarray:
    return np.array([np.full((8, 8, 3), c, np.uint8) for c in colours])


def test_labels_map_after_the_latent_units():
    model = make_model()
    rows = resolve_targets(model, solid((0, 0, 0)), [LabelTarget("garlic"), "basil", 4])
    assert [(t.column, t.kind, t.index, t.name) for t in rows[0]] == [
        (5, "label", 2, "garlic"),
        (3, "label", 0, "basil"),
        (4, "label", 1, "chicken"),
    ]


def test_top_k_labels_follow_each_images_scores():
    model = make_model()
    rows = resolve_targets(model, solid((255, 0, 0), (0, 255, 0), (0, 0, 255)), TopKLabels(2))
    assert [[t.name for t in row] for row in rows] == [
        ["tomato", "basil"],
        ["basil", "onion"],
        ["garlic", "chicken"],
    ]


def test_duplicates_are_kept_once_in_first_place():
    rows = resolve_targets(make_model(), solid((255, 0, 0)), [LabelTarget("basil"), TopKLabels(2)])
    assert [t.name for t in rows[0]] == ["basil", "tomato"]


def test_per_image_target_lists():
    rows = resolve_targets(make_model(), solid((0, 0, 0), (1, 1, 1)), [["onion"], ["tomato", 5]])
    assert [[t.column for t in row] for row in rows] == [[6], [7, 5]]


def test_latent_unit_carries_its_hierarchy_path():
    hierarchy_mod = pytest.importorskip("xmlcore.hierarchy")
    rng = np.random.default_rng(0)
    weights = [rng.random((len(VOCABULARY), 4)), rng.random((4, 3))]
    hierarchy = hierarchy_mod.LabelHierarchy.from_weights(weights, VOCABULARY, top_n=3)
    model = make_model(hierarchy)
    rows = resolve_targets(model, solid((0, 0, 0)), [LatentUnit(2), 1])
    latent = rows[0][0]
    assert (latent.column, latent.kind, latent.index) == (2, "latent", 2)
    assert latent.hierarchy_path == hierarchy.path(2).to_json()
    assert rows[0][1].kind == "latent" and rows[0][1].hierarchy_path == hierarchy.path(1).to_json()


def test_explicit_target_info_passes_through():
    info = TargetInfo(column=4, kind="output")
    assert resolve_targets(make_model(), solid((0, 0, 0)), [info]) == [[info]]


@pytest.mark.parametrize(
    ("targets", "code", "needle"),
    [
        ([LabelTarget("saffron")], "explain.unknown_target", "saffron"),
        (["saffron"], "explain.unknown_target", "saffron"),
        ([LatentUnit(3)], "explain.unknown_target", "latent unit 3"),
        ([LatentUnit(-1)], "explain.unknown_target", "latent unit -1"),
        ([8], "explain.unknown_target", "8"),
        ([], "explain.no_targets", "target"),
        ([3.5], "explain.bad_targets", "3.5"),
        ([["basil"], ["basil"], ["basil"]], "explain.bad_targets", "per image"),
    ],
)
def test_bad_targets_are_refused(targets, code, needle):
    with pytest.raises(ExplainError) as err:
        resolve_targets(make_model(), solid((0, 0, 0), (9, 9, 9)), targets)
    assert err.value.code == code
    assert needle in err.value.message


def test_top_k_needs_a_positive_k():
    with pytest.raises(ConfigError):
        TopKLabels(0)


def test_real_two_step_model_targets_drive_lime():
    """End to end on a tiny trained model: targets resolve to ``outputs_fn`` columns."""
    model_mod = pytest.importorskip("xmlcore.model")
    datasets = pytest.importorskip("xmlcore.datasets")
    from xmlcore.explain.lime import LimeExplainer

    data = datasets.generate_dishes("tiny", seed=0, n_images=24, image_size=32)
    model = model_mod.train_two_step(
        data.images,
        data.label_space,
        layer_sizes=(8, 4),
        epochs=1,
        batch_size=8,
        ae_params={"epochs": 5},
    )
    images = data.images[:2]
    label = model.vocabulary[3]
    rows = resolve_targets(model, images, [LatentUnit(1), LabelTarget(label), TopKLabels(2)])
    scores = model.predict_scores(images)
    for i, row in enumerate(rows):
        assert row[0].hierarchy_path == model.hierarchy().path(1).to_json()
        assert row[1].column == model.latent_dim + 3
        top = row[2:]
        assert len(top) in (1, 2)
        assert all(scores[i, t.index] >= np.sort(scores[i])[-2] for t in top)
    result = LimeExplainer(model.outputs_fn, num_samples=40).explain(images, rows)
    outputs = model.outputs_fn(images)
    for i, row in enumerate(result):
        for e in row:
            assert e.prediction == pytest.approx(float(outputs[i, e.target.column]), abs=1e-5)
            assert e.provenance["segmenter"]["name"] == "slic"
