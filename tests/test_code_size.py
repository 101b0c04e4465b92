"""xmlcore.code_size: the autoencoder's sizes chosen by the decoder ceiling on the labels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmlcore.autoencoder import default_layer_sizes
from xmlcore.code_size import (
    candidate_sizes,
    choose_layer_sizes,
    code_floor,
    code_size_metrics,
    layer_sizes_for,
    pick_sizes,
)
from xmlcore.errors import ConfigError


def planted_blocks(n_blocks: int, block: int, n: int = 400, seed: int = 0) -> np.ndarray:
    """0/1 rows of 1-2 whole label blocks: the labels need about n_blocks code units."""
    rng = np.random.default_rng(seed)
    V = np.zeros((n, n_blocks * block), dtype=np.float32)
    for i in range(n):
        for b in rng.choice(n_blocks, size=rng.integers(1, 3), replace=False):
            V[i, b * block : (b + 1) * block] = 1.0
    return V


def test_a_code_narrower_than_the_structure_is_refused() -> None:
    # 16 independent blocks: 4 units cannot hold which 1-2 of 16 are on, 16 can
    V = planted_blocks(16, 4)
    choice = choose_layer_sizes(V, candidates=[(32, 4), (32, 16)], k=4, epochs=80)
    ceilings = {row["layer_sizes"]: row["ceiling"] for row in choice.table}
    assert ceilings[(32, 16)] > ceilings[(32, 4)] + 0.1
    assert choice.layer_sizes == (32, 16)
    assert [row["eligible"] for row in choice.table] == [False, True]
    assert choice.ceiling == ceilings[(32, 16)] == choice.best


def test_the_narrowest_adequate_code_wins_but_not_below_the_floor() -> None:
    # 4 blocks of 8 labels (p = 32): 4 units decode it as well as 16 do, so the
    # narrower is chosen; 2 units would fit the tolerance on 2 blocks but are below
    # the floor ceil(log2 32) = 5 units that telling 32 labels apart takes
    V = planted_blocks(4, 8)
    choice = choose_layer_sizes(V, candidates=[(12, 8), (24, 16)], k=4, epochs=80)
    assert choice.layer_sizes == (12, 8)
    assert choice.table[0]["ceiling"] >= choice.best - choice.tolerance
    two_blocks = planted_blocks(2, 16, seed=1)
    floored = choose_layer_sizes(two_blocks, candidates=[(4, 2), (12, 6)], k=4, epochs=80)
    assert floored.floor == code_floor(32) == 5
    narrow = floored.table[0]
    assert narrow["layer_sizes"] == (4, 2) and narrow["ceiling"] >= floored.best - 0.01
    assert not narrow["eligible"] and floored.layer_sizes == (12, 6)


def test_sparse_input_row_sample_and_metrics() -> None:
    V = sp.csr_matrix(planted_blocks(4, 8, n=300))
    choice = choose_layer_sizes(V, candidates=[(12, 8)], max_rows=100, epochs=5)
    # 8 or 16 labels a row: k is the typical count, capped at 5
    assert choice.n_rows == 100 and choice.k == 5
    metrics = choice.metrics()
    assert metrics["code_size_chosen"] == 1.0 and metrics["decoder_ceiling[12-8]"] == round(
        choice.ceiling, 4
    )
    assert all(isinstance(v, float) for v in metrics.values())


def test_candidates_are_valid_for_the_vocabulary() -> None:
    assert candidate_sizes(14) == [(4, 2), (7, 3), (13, 6), (13, 12)]
    assert (64, 16) in candidate_sizes(708)  # the paper's sizes stay a candidate
    for p in (3, 5, 14, 60, 708):
        for first, last in candidate_sizes(p):
            assert p > first > last >= 1


@pytest.mark.parametrize(
    "kwargs",
    [{"tolerance": 1.5}, {"holdout_fraction": 0.0}, {"k": 0}, {"candidates": [(40, 8)]}],
)
def test_bad_settings_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        choose_layer_sizes(planted_blocks(4, 8, n=60), epochs=1, **kwargs)


def test_too_few_labelled_rows_is_a_config_error() -> None:
    V = np.zeros((50, 10), dtype=np.float32)
    V[:5, 0] = 1
    with pytest.raises(ConfigError) as err:
        choose_layer_sizes(V, epochs=1)
    assert err.value.code == "autoencoder.too_few_rows"


def test_train_two_step_records_the_choice_in_its_metadata() -> None:
    from xmlcore.datasets import generate_dishes
    from xmlcore.model import train_two_step

    data = generate_dishes("tiny", seed=0)
    model = train_two_step(
        data.images, data.label_space, ae_params={"epochs": 3}, epochs=1,
        regressor_params={"head_units": (8,)},
    )  # fmt: skip
    metrics = model.metadata.metrics
    sizes = tuple(model.metadata.layer_sizes)
    assert metrics["code_size_chosen"] == 1.0 and sizes in candidate_sizes(24)
    assert metrics[f"decoder_ceiling[{sizes[0]}-{sizes[1]}]"] == metrics["decoder_ceiling"]
    assert metrics["decoder_ceiling"] >= metrics["decoder_ceiling_best"] - 0.01
    assert sizes[-1] >= metrics["code_size_floor"] == code_floor(24)
    assert code_size_metrics(metrics) == {
        k: v for k, v in metrics.items() if "ceiling" in k or "code_size" in k
    }
    # the worker's evaluation ranks decoded blocks, never the dense (n, p) scores
    from xmlcore.metrics import evaluate_ranking

    Y = data.label_space.matrix
    assert evaluate_ranking(Y, model.score_blocks(data.images)) == evaluate_ranking(
        Y, model.predict_scores(data.images)
    )


def test_too_little_to_choose_on_falls_back_to_the_default_sizes() -> None:
    V = np.eye(8, 6, dtype=np.float32)  # 6 labelled rows
    assert layer_sizes_for(V) == (default_layer_sizes(6), {"code_size_chosen": 0.0})
    with pytest.raises(ConfigError):  # a bad setting is still an error
        layer_sizes_for(planted_blocks(4, 8, n=60), ae_params={"learning_rate": -1.0})


def test_a_code_wider_than_the_rows_allow_is_not_chosen() -> None:
    # 16 blocks need 16 units to decode; with 200 labelled rows and 25 rows per unit the
    # cap is 8 units, so the wide code's better ceiling does not buy it (issue 12: the
    # small preset's 59-58 over 30-15 cost the hierarchy for no test gain)
    V = planted_blocks(16, 4, n=200)
    capped = choose_layer_sizes(V, candidates=[(24, 8), (32, 16)], k=4, epochs=40)
    ceilings = [row["ceiling"] for row in capped.table]
    assert capped.cap == 8 and ceilings[1] > ceilings[0] + capped.tolerance
    assert capped.layer_sizes == (24, 8) and capped.best == ceilings[0]
    assert [row["eligible"] for row in capped.table] == [True, False]
    assert capped.metrics()["code_size_cap"] == 8.0


def test_the_pick_between_floor_cap_and_tolerance() -> None:
    # the small preset's seed-0 table (480 rows: cap 19, floor 6): 30-15, not 59-58
    sizes = [(15, 8), (30, 15), (59, 30), (59, 58)]
    ceilings = [0.7312, 0.8208, 0.8667, 0.9042]
    assert pick_sizes(sizes, ceilings, floor=6, cap=19, tolerance=0.01) == (
        (30, 15), 0.8208, [False, True, False, False]
    )  # fmt: skip
    # no cap (many rows): the narrowest within tolerance of the best, as before
    assert pick_sizes(sizes, [0.7, 0.8, 0.9, 0.905], floor=6, cap=58, tolerance=0.01)[0] == (
        59, 30
    )  # fmt: skip
    # the cap below the floor gives way, the floor does not
    assert pick_sizes(sizes, ceilings, floor=10, cap=4, tolerance=0.01)[0] == (59, 58)
    # nothing reaches the floor (tiny p): the best ceiling
    assert pick_sizes([(2, 1), (3, 2)], [0.9, 0.8], floor=4, cap=9, tolerance=0.0) == (
        (2, 1), 0.9, [False, False]
    )  # fmt: skip
