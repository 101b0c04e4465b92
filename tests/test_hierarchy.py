"""LabelHierarchy: planted groups are recovered; read-outs, paths, numbering, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from xmlcore.autoencoder import DeepNonNegativeAutoencoder
from xmlcore.errors import ConfigError
from xmlcore.hierarchy import LabelHierarchy


def make_grouped_labels(
    n: int = 400, n_groups: int = 5, group_size: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows are unions of 1-2 disjoint label groups (members kept with p=0.9) + noise."""
    rng = np.random.default_rng(seed)
    p = n_groups * group_size
    groups = rng.permutation(np.repeat(np.arange(n_groups), group_size))
    V = np.zeros((n, p), dtype=np.float32)
    for i in range(n):
        for g in rng.choice(n_groups, size=rng.integers(1, 3), replace=False):
            members = np.flatnonzero(groups == g)
            V[i, members] = rng.random(members.size) < 0.9
    V[rng.random((n, p)) < 0.02] = 1.0
    vocabulary = [f"g{groups[j]}_label{j}" for j in range(p)]
    return V, groups, vocabulary


@pytest.fixture(scope="module")
def grouped() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return make_grouped_labels()


@pytest.fixture(scope="module")
def hierarchy(grouped) -> LabelHierarchy:
    V, _, vocabulary = grouped
    ae = DeepNonNegativeAutoencoder(layer_sizes=(5, 2), epochs=60, seed=0).fit(V)
    return LabelHierarchy.from_autoencoder(ae, vocabulary, top_n=5)


def test_planted_groups_are_recovered(hierarchy, grouped):
    _, groups, _ = grouped
    assignment = hierarchy.label_assignment()
    assert assignment.shape == groups.shape
    assert normalized_mutual_info_score(groups, assignment) >= 0.8


def test_layer_one_units_list_labels_of_one_group(hierarchy):
    for unit in hierarchy.units(1):
        assert not unit.dead
        assert len(unit.members) == 5
        weights = [w for _, w in unit.members]
        assert weights == sorted(weights, reverse=True) and weights[-1] > 0
        prefixes = {name.split("_")[0] for name, _ in unit.members}
        assert len(prefixes) == 1, f"unit {unit.index} mixes groups: {unit.members}"


def test_deeper_units_name_child_units_with_indices(hierarchy):
    top = hierarchy.unit(2, 0)
    assert top.layer == 2 and top.index == 0
    assert top.members
    for (name, _), child in zip(top.members, top.member_indices, strict=True):
        assert name == f"unit {child}" and 0 <= child < 5


def test_path_follows_strongest_descendants(hierarchy):
    path = hierarchy.path(1, fanout=3)
    H1, H2 = hierarchy.H
    expected_children = [int(i) for i in np.argsort(-H2[:, 1], kind="stable")[:3]]
    assert [u.index for u, _ in path.levels[0]] == expected_children
    label_weight = H1[:, expected_children] @ H2[expected_children, 1]
    best = hierarchy.vocabulary[int(np.argmax(label_weight))]
    assert path.labels[0][0] == best
    text = path.to_text().splitlines()
    assert text[0].startswith("latent 1 <- units " + ", ".join(map(str, expected_children)))
    assert text[0].endswith(", ".join(name for name, _ in path.labels))
    assert text[1].startswith(f"H1, Label {expected_children[0]}: ")
    json.dumps(path.to_json())


def test_text_and_json_cover_every_unit(hierarchy):
    lines = hierarchy.to_text().splitlines()
    assert len(lines) == 5 + 2
    assert lines[0].startswith("H1, Label 0: ") and lines[-1].startswith("H2, Label 1: ")
    doc = json.loads(json.dumps(hierarchy.to_json()))
    assert doc["layer_sizes"] == [5, 2]
    assert [len(layer["units"]) for layer in doc["layers"]] == [5, 2]
    assert doc["layers"][0]["units"][3]["index"] == 3


def test_dead_units_and_unassigned_labels_are_marked():
    H1 = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 2.0], [0.0, 0.0, 0.0]])
    H2 = np.array([[1.0], [0.0], [0.0]])
    hier = LabelHierarchy.from_weights([H1, H2], ["a", "b", "c"], top_n=2)
    dead = hier.unit(1, 1)
    assert dead.dead and dead.members == []
    assert dead.to_text() == "H1, Label 1: (dead unit)"
    assert hier.unit(1, 0).members == [("a", 1.0), ("b", 0.5)]
    np.testing.assert_array_equal(hier.label_assignment(), [0, 2, -1])
    path = hier.path(0, fanout=3)
    assert [u.index for u, _ in path.levels[0]] == [0], "zero-weight units are not in a path"
    assert path.to_text().splitlines()[0] == "latent 0 <- units 0 <- a, b"


def test_single_layer_path_goes_straight_to_labels():
    hier = LabelHierarchy.from_weights([np.array([[0.2, 1.0], [0.9, 0.0]])], ["x", "y"])
    path = hier.path(0)
    assert path.levels == [] and [n for n, _ in path.labels] == ["y", "x"]
    assert path.to_text() == "latent 0 <- y, x"


@pytest.mark.parametrize(
    ("H", "vocabulary"),
    [
        ([], ["a"]),
        ([np.ones((3, 2))], ["a", "b"]),
        ([np.ones((2, 2)), np.ones((3, 1))], ["a", "b"]),
        ([-np.ones((2, 1))], ["a", "b"]),
        ([np.full((2, 1), np.nan)], ["a", "b"]),
    ],
)
def test_bad_weights_are_refused(H, vocabulary):
    with pytest.raises(ConfigError) as err:
        LabelHierarchy.from_weights(H, vocabulary)
    assert err.value.code == "hierarchy.bad_weights"


def test_unknown_units_and_layers_are_errors(hierarchy):
    with pytest.raises(ConfigError) as err:
        hierarchy.path(2)
    assert err.value.code == "hierarchy.unknown_unit"
    with pytest.raises(ConfigError) as err:
        hierarchy.unit(1, -1)
    assert err.value.code == "hierarchy.unknown_unit"
    with pytest.raises(ConfigError) as err:
        hierarchy.units(3)
    assert err.value.code == "hierarchy.unknown_layer"
    with pytest.raises(ConfigError):
        hierarchy.path(0, fanout=0)
