"""Ranking and hierarchy metrics on hand-computed cases, sparse == dense, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from xmlcore.errors import ConfigError
from xmlcore.metrics import (
    assign_groups_from_weights,
    best_match_purity,
    coverage_at_k,
    evaluate_ranking,
    hierarchy_nmi,
    ndcg_at_k,
    precision_at_k,
    propensities,
    psp_at_k,
)

# Row 0 has labels {0, 2}, row 1 has {1}, row 2 has none.
Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
# Rankings (stable argsort of -scores): row 0 -> 0, 1, 3, 2; row 1 -> 3, 2, 0, 1;
# row 2 -> 3, 2, 1, 0.
SCORES = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.1, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
LOG2_3, LOG2_5 = math.log2(3), math.log2(5)


def test_precision_at_k_by_hand() -> None:
    # P@1: row 0 hits label 0 -> 1; rows 1, 2 miss -> (1 + 0 + 0) / 3.
    assert precision_at_k(Y, SCORES, 1) == pytest.approx(1 / 3)
    # P@3: row 0 top {0, 1, 3} holds 1 -> 1/3; row 1 top {3, 2, 0} none -> (1/3) / 3.
    assert precision_at_k(Y, SCORES, 3) == pytest.approx(1 / 9)
    # P@4: row 0 all of its 2 -> 2/4; row 1 its label at rank 4 -> 1/4; mean of 3 rows.
    assert precision_at_k(Y, SCORES, 4) == pytest.approx((2 / 4 + 1 / 4) / 3)


def test_ndcg_at_k_by_hand() -> None:
    # k=3: row 0 gains [1, 0, 0] -> DCG 1; |y| = 2 -> IDCG = 1 + 1/log2(3); row 1 DCG 0;
    # row 2 has no label -> 0.
    row0 = 1 / (1 + 1 / LOG2_3)
    assert ndcg_at_k(Y, SCORES, 3) == pytest.approx(row0 / 3)
    # k=4: row 0 gains [1, 0, 0, 1] -> (1 + 1/log2(5)) / (1 + 1/log2(3));
    # row 1 gains [0, 0, 0, 1] -> (1/log2(5)) / IDCG@min(4, 1) = 1/log2(5) / 1.
    row0 = (1 + 1 / LOG2_5) / (1 + 1 / LOG2_3)
    assert ndcg_at_k(Y, SCORES, 4) == pytest.approx((row0 + 1 / LOG2_5) / 3)
    # A perfect ranking scores 1 on every row that has labels.
    assert ndcg_at_k(Y[:2], Y[:2] + 0.0, 2) == pytest.approx(1.0)


def test_k_beyond_the_number_of_labels() -> None:
    # P@10 still divides by 10: (2 + 1 + 0) hits / 10 / 3 rows.
    assert precision_at_k(Y, SCORES, 10) == pytest.approx(3 / 10 / 3)
    assert ndcg_at_k(Y, SCORES, 10) == pytest.approx(ndcg_at_k(Y, SCORES, 4))


def test_ties_are_broken_by_column_order() -> None:
    labels = np.array([[0, 1, 0], [1, 0, 0]])
    flat = np.zeros((2, 3))
    # Every score equal: the ranking is 0, 1, 2 on both rows, so only row 1 hits at 1.
    assert precision_at_k(labels, flat, 1) == pytest.approx(0.5)
    assert coverage_at_k(flat, 2) == pytest.approx(2 / 3)


def test_propensities_match_jain_et_al() -> None:
    labels = np.zeros((3, 3))
    labels[0, 0] = 1
    labels[:, 1] = 1
    p = propensities(labels)
    # N_l = 1: C (1 + B)^-A = (log N - 1), so p = 1 / log N exactly.
    assert p[0] == pytest.approx(1 / math.log(3))
    # N_l = 0: 1 / (1 + (log 3 - 1) 2.5^0.55 1.5^-0.55).
    assert p[2] == pytest.approx(1 / (1 + (math.log(3) - 1) * (2.5 / 1.5) ** 0.55))
    assert p[2] < p[0] < p[1] <= 1  # rarer labels have smaller propensities
    big = np.zeros((1000, 2))
    big[:, 0] = 1
    big[0, 1] = 1
    head, tail = propensities(big, A=0.6, B=2.6)
    # Head: (log 1000 - 1) 3.6^0.6 = 12.74; 1002.6^-0.6 = 0.0158 -> 1 / 1.2016 = 0.832.
    assert head == pytest.approx(0.832, abs=1e-3)
    assert tail == pytest.approx(1 / math.log(1000))  # N_l = 1 again: 1 / log N
    with pytest.raises(ConfigError) as info:
        propensities(labels[:2])
    assert info.value.code == "metrics.too_few_rows"


def test_psp_at_k_by_hand() -> None:
    prop = np.array([0.5, 0.25, 1.0, 1.0])  # 1/p = 2, 4, 1, 1
    # k=1: achieved = row 0 label 0 (2) = 2; best = row 0 max(2, 1) + row 1 4 = 6.
    assert psp_at_k(Y, SCORES, 1, propensity=prop) == pytest.approx(2 / 6)
    # k=3: achieved still 2; best = row 0 (2 + 1) + row 1 (4) = 7.
    assert psp_at_k(Y, SCORES, 3, propensity=prop) == pytest.approx(2 / 7)
    assert psp_at_k(Y, Y + 0.0, 2, propensity=prop) == pytest.approx(1.0)
    assert psp_at_k(np.zeros((3, 4)), SCORES, 2, propensity=prop) == 0.0


def test_psp_matches_a_plain_loop_on_random_data() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 30)) < 0.1).astype(np.float32)
    scores = rng.random((40, 30))
    inverse = 1 / propensities(labels)
    for k in (1, 3, 5):
        achieved = best = 0.0
        for row in range(40):
            row_scores = [float(x) for x in scores[row]]
            order = sorted(range(30), key=lambda j: -row_scores[j])[:k]
            achieved += sum(labels[row, j] * inverse[j] for j in order)
            best += sum(sorted((inverse[j] for j in np.flatnonzero(labels[row])), reverse=True)[:k])
        assert psp_at_k(labels, scores, k) == pytest.approx(achieved / best)


def test_coverage_by_hand() -> None:
    # top-1 columns: 0, 3, 3 -> 2 distinct of 4; top-2 adds 1 and 2 -> all 4.
    assert coverage_at_k(SCORES, 1) == pytest.approx(0.5)
    assert coverage_at_k(SCORES, 2) == pytest.approx(1.0)
    assert coverage_at_k(SCORES, 1, n_labels=8) == pytest.approx(0.25)
    with pytest.raises(ConfigError):
        coverage_at_k(SCORES, 1, n_labels=3)


def test_evaluate_ranking_keys_values_and_sparse_equals_dense() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((50, 20)) < 0.15).astype(np.float64)
    scores = rng.random((50, 20)).astype(np.float32)
    report = evaluate_ranking(dense, scores, ks=(1, 3, 5))
    assert set(report) == {f"{m}@{k}" for m in ("p", "ndcg", "psp", "coverage") for k in (1, 3, 5)}
    assert report["p@3"] == pytest.approx(precision_at_k(dense, scores, 3))
    assert report["ndcg@5"] == pytest.approx(ndcg_at_k(dense, scores, 5))
    assert report["psp@5"] == pytest.approx(psp_at_k(dense, scores, 5))
    assert report["coverage@1"] == pytest.approx(coverage_at_k(scores, 1))
    for matrix in (sp.csr_matrix(dense), sp.csc_matrix(dense), sp.coo_array(dense)):
        assert evaluate_ranking(matrix, scores, ks=(1, 3, 5)) == pytest.approx(report)
    assert all(0.0 <= v <= 1.0 for v in report.values())


def test_bad_shapes_and_k() -> None:
    cases = [
        lambda: precision_at_k(Y, SCORES[:, :3], 1),
        lambda: ndcg_at_k(Y[:2], SCORES, 1),
        lambda: psp_at_k(Y, SCORES, 1, propensity=np.ones(3)),
        lambda: precision_at_k(Y[0], SCORES[0], 1),
        lambda: hierarchy_nmi([0, 1], [0, 1, 2]),
    ]
    for call in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.code == "metrics.shape_mismatch"
    for k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            precision_at_k(Y, SCORES, k)  # type: ignore[arg-type]
        assert info.value.code == "metrics.bad_k"
    with pytest.raises(ConfigError):
        evaluate_ranking(Y, SCORES, ks=())


def test_bad_values() -> None:
    with pytest.raises(ConfigError) as info:
        precision_at_k(Y * 2, SCORES, 1)
    assert info.value.code == "metrics.not_binary"
    with pytest.raises(ConfigError) as info:
        precision_at_k(Y, np.where(SCORES > 0.5, np.nan, SCORES), 1)
    assert info.value.code == "metrics.bad_scores"
    with pytest.raises(ConfigError) as info:
        psp_at_k(Y, SCORES, 1, propensity=np.array([0.5, 0.0, 1, 1]))
    assert info.value.code == "metrics.bad_propensity"


def test_hierarchy_nmi_and_purity() -> None:
    # Same partition under other names: NMI 1, purity 1.
    assert hierarchy_nmi([5, 5, 7, 7], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert best_match_purity([5, 5, 7, 7], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    # Independent partitions share no information.
    assert hierarchy_nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # Predicted group 0 = {a, a, b} -> best match a, 2 right; group 1 = {b} -> 1 right: 3/4.
    assert best_match_purity([0, 0, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(0.75)
    with pytest.raises(ConfigError):
        best_match_purity([], [])


def test_assign_groups_from_weights() -> None:
    H1 = np.array([[0.1, 0.9], [0.5, 0.5], [0.0, 0.0], [2.0, 0.0]])
    # argmax per label; the tie goes to unit 0; an all-zero label has no unit (-1).
    np.testing.assert_array_equal(assign_groups_from_weights(H1), [1, 0, -1, 0])
    with pytest.raises(ConfigError):
        assign_groups_from_weights(np.ones(3))


def test_chunked_ranking_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import xmlcore.metrics as metrics

    rng = np.random.default_rng(2)
    labels = (rng.random((23, 9)) < 0.3).astype(np.float64)
    scores = rng.integers(0, 3, (23, 9)).astype(np.float64)  # many ties
    whole = evaluate_ranking(labels, scores, ks=(1, 4))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)  # 2 rows per chunk
    assert evaluate_ranking(labels, scores, ks=(1, 4)) == whole


def test_fast_top_k_equals_a_full_stable_sort_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random((60, 50)) < 0.2).astype(np.float64)
    scores = rng.integers(0, 4, (60, 50)).astype(np.float64)  # ties everywhere
    scores[0] = 1.0  # a row that is one big tie
    scores[1, :3] = [np.inf, -np.inf, np.inf]
    ranking = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 2, 5, 7):
        hits = np.take_along_axis(labels, ranking[:, :k], axis=1)
        assert precision_at_k(labels, scores, k) == pytest.approx(hits.sum(axis=1).mean() / k)
        discounts = 1 / np.log2(np.arange(2, k + 2))
        dcg = hits @ discounts
        ideal = np.array([discounts[: min(k, int(n))].sum() for n in labels.sum(axis=1)])
        expected = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0).mean()
        assert ndcg_at_k(labels, scores, k) == pytest.approx(expected)
        top_columns = np.unique(ranking[:, :k]).size / 50
        assert coverage_at_k(scores, k) == pytest.approx(top_columns)


def test_block_scores_rank_like_the_dense_matrix(monkeypatch) -> None:
    import xmlcore.metrics as metrics_module
    from xmlcore.metrics import BlockScores, evaluate_ranking

    # issue 12: a model's scores for a big test set, decoded a chunk of rows at a time
    rng = np.random.default_rng(4)
    Y = sp.csr_matrix((rng.random((40, 9)) < 0.3).astype(np.float32))
    scores = rng.random((40, 9)).astype(np.float32)
    asked: list[tuple[int, int]] = []

    def rows(a: int, b: int) -> np.ndarray:
        asked.append((a, b))
        return scores[a:b]

    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 9 * 7)  # 7 rows a chunk
    blocks = evaluate_ranking(Y, BlockScores((40, 9), rows), ks=(1, 3, 5))
    assert blocks == evaluate_ranking(Y, scores, ks=(1, 3, 5))
    assert asked[0] == (0, 7) and max(b - a for a, b in asked) == 7
    bad = scores.copy()
    bad[33, 2] = np.nan
    with pytest.raises(ConfigError) as err:
        evaluate_ranking(Y, BlockScores((40, 9), lambda a, b: bad[a:b]))
    assert err.value.code == "metrics.bad_scores"
