"""bench/xml_quality.py runs end to end and prints its figures as the last JSON line."""

from __future__ import annotations

import json

import numpy as np

from tests.bench_scripts import load_bench_script
from xmlcore.code_size import candidate_sizes

MODELS = (
    "two_step", "two_step_paper", "two_step_tail", "two_step_bce", "binary_relevance", "nmf",
)  # fmt: skip
# Even after one epoch the decoded models rank the frequent labels first (the decoder
# carries the label co-occurrence); uniformly random scores (chance, about 0.2 P@5 on the
# tiny preset) stay far below. A broken model, decoder or metric lands near chance and
# fails this. binary_relevance's sigmoid heads start from scratch and are still at chance
# after one epoch, so it is only checked to be a valid figure.
ABOVE_CHANCE = 0.1
DECODED = ("two_step", "two_step_paper", "two_step_tail", "two_step_bce", "nmf")


def test_bench_prints_every_figure_as_json(capsys) -> None:
    bench = load_bench_script("xml_quality")
    argv = ["--preset", "tiny", "--epochs", "1", "--ae-epochs", "5", "--n-val", "20"]
    result = bench.main([*argv, "--n-test", "30"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    chance = result["random"]["p@5"]
    assert 0.1 < chance < 0.35  # the labels per image / n_labels of the tiny preset
    for name in MODELS:
        assert {"p@1", "p@3", "p@5", "psp@5", "coverage@5"} <= set(result[name])
        assert 0.0 <= result[name]["p@5"] <= 1.0
    for name in DECODED:
        assert result[name]["p@5"] > chance + ABOVE_CHANCE, name
    assert isinstance(result["hierarchy_nmi"], float)
    assert result["two_step_tail"]["alpha"][0] in bench.ALPHAS
    assert set(result["tail_curve"]) == {str(a) for a in bench.ALPHAS}
    targets = result["targets"]
    assert set(targets) >= {
        "two_step_p@5_minus_nmf",
        "two_step_tail_psp@5_relative_gain",
        "two_step_bce_psp@5_relative_gain",
        "hierarchy_nmi_at_least_0.6",
    }
    assert len(targets["two_step_p@5_minus_nmf_per_seed"]) == 1
    setup = result["setup"]
    assert setup["preset"] == "tiny" and setup["n_labels"] == 24
    # what users get by default: sizes chosen on the training labels, with the table
    assert tuple(setup["layers"][0]) in candidate_sizes(24)
    assert setup["code_size"][0]["code_size_chosen"] == 1.0
    assert (setup["n_train"], setup["n_val"], setup["n_test"]) == (48, 20, 30)


def test_a_subset_of_models_reports_only_their_figures(capsys) -> None:
    bench = load_bench_script("xml_quality")
    argv = ["--preset", "tiny", "--epochs", "1", "--ae-epochs", "3", "--n-val", "10"]
    result = bench.main([*argv, "--n-test", "20", "--models", "two_step", "nmf"])
    assert set(MODELS) & set(result) == {"two_step", "nmf"}
    assert "tail_curve" not in result and result["setup"]["models"] == ["two_step", "nmf"]
    assert set(result["targets"]) == {
        "hierarchy_nmi_at_least_0.6", "two_step_p@5_minus_nmf", "two_step_p@5_minus_nmf_per_seed"
    }  # fmt: skip
    assert "two_step_tail" not in capsys.readouterr().out


def test_paired_seeds_table_compares_two_step_seed_by_seed(capsys) -> None:
    bench = load_bench_script("xml_quality")
    argv = ["--preset", "tiny", "--epochs", "1", "--ae-epochs", "3", "--n-val", "10"]
    result = bench.main([*argv, "--n-test", "20", "--models", "two_step", "random"])
    assert list(result["paired"]) == []  # nmf and two_step_bce did not run
    runs = [
        {"two_step": {"p@5": a, "psp@5": a / 2}, "nmf": {"p@5": b, "psp@5": b / 2}}
        for a, b in [(0.6, 0.5), (0.5, 0.55), (0.7, 0.6)]
    ]
    paired = bench.paired_seeds(runs, "nmf")["p@5"]
    assert paired["gap"] == [0.1, -0.05, 0.1] and paired["two_step_ahead"] == 2
    assert paired["gap_mean"] == 0.05 and paired["gap_stderr"] == 0.05
    assert "paired seeds" not in capsys.readouterr().out


def test_random_scores_are_chance() -> None:
    bench = load_bench_script("xml_quality")
    scores = bench.RandomScores(5, seed=1).predict_scores(np.zeros((4, 2, 2, 3)))
    assert scores.shape == (4, 5) and len(np.unique(scores)) == 20


def test_quick_flag_only_fills_unset_options() -> None:
    bench = load_bench_script("xml_quality")
    quick = bench.parse_args(["--quick"])
    assert quick.preset == "small" and quick.epochs == bench.QUICK["epochs"]
    assert quick.n_test == 1000 and quick.seeds == [0]
    assert quick.models == ["two_step", "two_step_tail", "binary_relevance", "nmf"]
    assert bench.parse_args(["--quick", "--models", "nmf"]).models == ["nmf"]
    assert bench.parse_args(["--quick", "--epochs", "2"]).epochs == 2


def test_splits_are_disjoint_and_seeded() -> None:
    bench = load_bench_script("xml_quality")
    train, val, test = bench.split_rows((50, 10, 40), seed=3)
    assert len(np.unique(np.concatenate([train, val, test]))) == 100
    again = bench.split_rows((50, 10, 40), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))


def test_seed_spread_and_alpha_choice() -> None:
    bench = load_bench_script("xml_quality")
    assert bench.mean_std([0.5], "p@5") == {"p@5": 0.5}
    assert bench.mean_std([0.4, 0.6], "p@5") == {"p@5": 0.5, "p@5_std": 0.1414}
    # a rare label that is right in every row: re-ranking toward it must be chosen
    Y = np.array([[1, 0, 0, 0, 0, 0, 1]] * 4 + [[1, 0, 0, 0, 0, 0, 0]] * 20)
    propensity = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2])
    scores = np.tile([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3], (24, 1))
    scores[4:, 6] = 0.0
    assert bench.pick_alpha(Y, scores, propensity) > 0
    np.testing.assert_allclose(bench.rerank(scores, propensity, 0.0), scores)


def test_digits_preset_trains_on_real_digit_scenes() -> None:
    bench = load_bench_script("xml_quality")
    argv = ["--preset", "digits", "--test-fraction", "0.98", "--n-test", "20", "--n-val", "10"]
    argv += ["--epochs", "1", "--ae-epochs", "3", "--layers", "13", "12"]
    result = bench.main([*argv, "--models", "two_step", "binary_relevance"])
    setup = result["setup"]
    assert setup["n_labels"] == 14 and setup["image_size"] == 48 and setup["n_train"] == 30
    assert setup["layers"] == [[13, 12]] and setup["code_size"] == [None]
    assert 0.0 <= result["two_step"]["p@3"] <= 1.0
    assert 0.0 <= result["binary_relevance"]["p@3"] <= 1.0
