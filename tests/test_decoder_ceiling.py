"""bench/decoder_ceiling.py: every compression is scored from perfect codes, as JSON."""

from __future__ import annotations

import json

import numpy as np

from tests.bench_scripts import load_bench_script


def test_ceiling_scores_every_decoder_and_prints_json(capsys) -> None:
    bench = load_bench_script("decoder_ceiling")
    result = bench.main(["--preset", "tiny", "--seeds", "0", "--n-test", "40", "--ae-epochs", "20"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert set(result) == {"ae_mse", "ae_propensity_mse", "ae_bce", "nmf", "setup"}
    for name in ("ae_mse", "ae_propensity_mse", "ae_bce", "nmf"):
        row = result[name]
        assert set(row) == set(bench.FIGURES)
        # alpha = 0 is among the re-rankings, so the best re-ranking is never worse
        assert row["psp@5_best_rerank"] >= row["psp@5"]
        # decoding the true labels ranks far above chance (about 0.2 on 24 labels)
        assert 0.5 < row["p@5"] <= 1.0
    assert result["setup"]["layers"] == [12, 6]


def test_label_matrices_split_the_generated_rows() -> None:
    bench = load_bench_script("decoder_ceiling")
    args = bench.parse_args(["--preset", "tiny", "--n-test", "30"])
    train, test = bench.label_matrices(args, seed=1)
    assert train.shape == (48, 24) and test.shape == (30, 24)
    assert set(np.unique(np.concatenate([train, test]))) == {0.0, 1.0}
    book = bench.sample_recipes("tiny", seed=1, n_images=78)
    rows = sorted(map(tuple, book.membership.astype(np.float32).tolist()))
    assert sorted(map(tuple, np.concatenate([train, test]).tolist())) == rows
