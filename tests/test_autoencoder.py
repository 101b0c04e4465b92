"""DeepNonNegativeAutoencoder: non-negativity, tying, determinism, state, bad input."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import scipy.sparse as sp

from xmlcore.autoencoder import DeepNonNegativeAutoencoder
from xmlcore.errors import ConfigError, ModelError


def make_planted_labels(
    n: int = 300, n_groups: int = 4, group_size: int = 6, noise: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 (n, n_groups * group_size): each row is 1-2 label groups plus random flips."""
    rng = np.random.default_rng(seed)
    p = n_groups * group_size
    groups = np.repeat(np.arange(n_groups), group_size)
    V = np.zeros((n, p), dtype=np.float32)
    for i in range(n):
        for g in rng.choice(n_groups, size=rng.integers(1, 3), replace=False):
            V[i, groups == g] = rng.random(group_size) < 0.9
    V[rng.random((n, p)) < noise] = 1.0
    return V, groups


class StepMinRecorder(keras.callbacks.Callback):
    """Smallest entry of any encoder matrix after every optimiser step."""

    def __init__(self) -> None:
        super().__init__()
        self.mins: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # the H matrices only: the logistic loss adds a label bias of any sign
        weights = [keras.ops.convert_to_numpy(w) for w in self.model.get_layer("tied_nonneg").H]
        self.mins.append(min(float(w.min()) for w in weights))


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    return make_planted_labels()[0]


@pytest.fixture(scope="module")
def fitted(planted: np.ndarray) -> DeepNonNegativeAutoencoder:
    return DeepNonNegativeAutoencoder(layer_sizes=(8, 3), epochs=60, seed=1).fit(planted)


def test_weights_and_codes_are_non_negative_with_expected_shapes(fitted, planted):
    assert [h.shape for h in fitted.H_] == [(24, 8), (8, 3)]
    assert all(h.dtype == np.float32 and h.min() >= 0 for h in fitted.H_)
    assert min(fitted.history_["min_h"]) >= 0
    codes = fitted.codes(planted)
    assert [c.shape for c in codes] == [(300, 8), (300, 3)]
    assert all(c.min() >= 0 for c in codes)
    np.testing.assert_array_equal(codes[-1], fitted.transform(planted))


def test_projection_keeps_h_non_negative_after_every_step(planted):
    # A random start and a large step push entries below zero; NonNeg must clip them.
    recorder = StepMinRecorder()
    ae = DeepNonNegativeAutoencoder(
        layer_sizes=(8, 3), init="random", learning_rate=0.05, epochs=8, batch_size=64
    )
    ae.fit(planted, callbacks=[recorder])
    assert len(recorder.mins) >= 8 * 4
    assert min(recorder.mins) >= 0.0
    assert any((h == 0).any() for h in ae.H_), "the constraint never had to act"


def test_training_reduces_the_reconstruction_error(fitted, planted):
    loss = fitted.history_["loss"]
    assert loss[-1] < loss[0]
    zero_error = float(np.mean(planted**2))
    assert fitted.reconstruction_error(planted) < 0.5 * zero_error


def test_decoder_is_tied_to_the_encoder(fitted, planted):
    W = fitted.transform(planted)
    H1, H2 = fitted.H_
    np.testing.assert_allclose(fitted.inverse_transform(W), W @ H2.T @ H1.T, rtol=1e-5)
    model = fitted.keras_model()
    assert [tuple(w.shape) for w in model.weights] == [h.shape for h in fitted.H_]
    assert len(model.trainable_weights) == 2
    keras_recon = model.predict(planted, verbose=0)
    np.testing.assert_allclose(keras_recon, fitted.inverse_transform(W), rtol=1e-4, atol=1e-5)


def test_same_seed_gives_same_weights(planted):
    def fit() -> DeepNonNegativeAutoencoder:
        return DeepNonNegativeAutoencoder(layer_sizes=(8, 3), epochs=5, seed=7).fit(planted)

    first, second = fit(), fit()
    for a, b in zip(first.H_, second.H_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_sparse_input_matches_dense(fitted, planted):
    np.testing.assert_allclose(
        fitted.transform(sp.csr_matrix(planted)), fitted.transform(planted), rtol=1e-6
    )


def test_state_round_trip_is_plain_data(fitted, planted):
    state = fitted.get_state()
    json.dumps(state["config"])
    json.dumps(state["history"])
    assert all(isinstance(w, np.ndarray) for w in state["weights"])
    restored = DeepNonNegativeAutoencoder.from_state(state)
    assert restored.get_params() == fitted.get_params()
    np.testing.assert_array_equal(restored.transform(planted), fitted.transform(planted))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(format="other"),
        lambda s: s.update(weights=[s["weights"][0]]),
        lambda s: s.update(weights=[-w for w in s["weights"]]),
        lambda s: s["config"].update(unknown=1),
    ],
)
def test_from_state_rejects_inconsistent_states(fitted, mutate):
    state = fitted.get_state()
    mutate(state)
    with pytest.raises(ModelError) as err:
        DeepNonNegativeAutoencoder.from_state(state)
    assert err.value.code == "autoencoder.bad_state"


@pytest.mark.parametrize(
    ("V", "code"),
    [
        (-np.ones((4, 5)), "autoencoder.negative_input"),
        (np.full((4, 5), np.nan), "autoencoder.not_finite"),
        (np.ones(5), "autoencoder.bad_input"),
        (np.ones((1, 5)), "autoencoder.too_few_rows"),
        ([["a", "b"]], "autoencoder.bad_input"),
    ],
)
def test_bad_label_matrices_raise_clear_errors(V, code):
    with pytest.raises(ConfigError) as err:
        DeepNonNegativeAutoencoder(layer_sizes=(2, 1)).fit(V)
    assert err.value.code == code


@pytest.mark.parametrize("sizes", [(24, 3), (30,), (3, 8), (0,), (8, 8), ()])
def test_bad_layer_sizes_are_refused(planted, sizes):
    with pytest.raises(ConfigError) as err:
        DeepNonNegativeAutoencoder(layer_sizes=sizes).fit(planted)
    assert err.value.code == "autoencoder.bad_layer_sizes"
    assert "p=24" in err.value.message


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"loss": "hinge"}, "autoencoder.bad_loss"),
        ({"init": "pca"}, "autoencoder.bad_init"),
        ({"epochs": 0}, "autoencoder.bad_param"),
        ({"tail_power": -1.0}, "autoencoder.bad_param"),
    ],
)
def test_bad_hyper_parameters_are_refused(planted, params, code):
    with pytest.raises(ConfigError) as err:
        DeepNonNegativeAutoencoder(layer_sizes=(8, 3), **params).fit(planted)
    assert err.value.code == code


def test_use_before_fit_and_wrong_widths_are_errors(fitted):
    with pytest.raises(ModelError):
        DeepNonNegativeAutoencoder().transform(np.ones((2, 5)))
    with pytest.raises(ConfigError) as err:
        fitted.transform(np.ones((2, 5)))
    assert err.value.code == "autoencoder.shape_mismatch"
    with pytest.raises(ConfigError):
        fitted.inverse_transform(np.ones((2, 4)))


def test_propensity_weights_favour_rare_labels():
    rng = np.random.default_rng(0)
    V = (rng.random((500, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.01])).astype(np.float32)
    assert np.all(np.diff(V.sum(axis=0)) < 0)

    def weights(power: float) -> np.ndarray:
        ae = DeepNonNegativeAutoencoder(loss="propensity_mse", tail_power=power)
        return ae._label_weights(V)

    np.testing.assert_allclose(weights(0.0), 1.0, rtol=1e-6)
    for power in (1.0, 2.0):
        assert weights(power).mean() == pytest.approx(1.0, rel=1e-5)
        assert np.all(np.diff(weights(power)) > 0), "rarer labels weigh more"
    assert weights(2.0)[-1] / weights(2.0)[0] > weights(1.0)[-1] / weights(1.0)[0]


def test_propensity_loss_trains_a_non_negative_model(planted):
    ae = DeepNonNegativeAutoencoder(layer_sizes=(8, 3), loss="propensity_mse", epochs=10)
    ae.fit(planted)
    assert all(h.min() >= 0 for h in ae.H_)
    assert ae.history_["loss"][-1] <= ae.history_["loss"][0]
    assert "val_loss" in ae.history_


def test_default_layer_sizes_fit_every_vocabulary() -> None:
    from xmlcore.autoencoder import default_layer_sizes

    assert default_layer_sizes(708) == default_layer_sizes(128) == (64, 16)
    assert default_layer_sizes(60) == (30, 15)  # half, then half: a wide code (BENCHMARKS)
    for p in (3, 8, 24, 60, 128):
        first, second = default_layer_sizes(p)
        assert p > first > second >= 1


@pytest.fixture(scope="module")
def logistic(planted: np.ndarray) -> DeepNonNegativeAutoencoder:
    return DeepNonNegativeAutoencoder(
        layer_sizes=(8, 3), loss="bce", epochs=60, learning_rate=0.03, seed=1
    ).fit(planted)


def test_logistic_loss_keeps_h_non_negative_after_every_step(planted):
    recorder = StepMinRecorder()
    ae = DeepNonNegativeAutoencoder(
        layer_sizes=(8, 3), loss="bce", init="random", learning_rate=0.05, epochs=8,
        batch_size=64,
    )  # fmt: skip
    ae.fit(planted, callbacks=[recorder])
    assert len(recorder.mins) >= 8 * 4 and min(recorder.mins) >= 0.0
    assert ae.label_bias_ is not None and ae.label_bias_.shape == (24,)


def test_logistic_decoder_is_tied_with_a_label_bias_and_a_sigmoid(logistic, planted):
    W = logistic.transform(planted)
    H1, H2 = logistic.H_
    bias = logistic.label_bias_
    assert logistic.output_activation == "sigmoid" and bias.min() < 0  # rare labels: < 50%
    expected = 1.0 / (1.0 + np.exp(-(W @ H2.T @ H1.T + bias)))
    recon = logistic.inverse_transform(W)
    np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
    assert recon.min() > 0 and recon.max() < 1
    np.testing.assert_array_equal(logistic.decoder_bias(), bias)
    keras_recon = logistic.keras_model().predict(planted, verbose=0)
    np.testing.assert_allclose(keras_recon, recon, rtol=1e-4, atol=1e-5)


def test_logistic_training_lowers_the_cross_entropy_and_ranks_the_true_labels(logistic, planted):
    loss = logistic.history_["loss"]
    assert loss[-1] < 0.7 * loss[0]
    recon = logistic.inverse_transform(logistic.transform(planted))
    # every row's true labels outscore its absent ones (ROC AUC per row, averaged)
    aucs = [
        np.mean(row[truth > 0][:, None] > row[truth == 0][None, :])
        for row, truth in zip(recon, planted, strict=True)
        if 0 < truth.sum() < len(truth)
    ]
    assert np.mean(aucs) > 0.95


def test_logistic_state_round_trips_its_bias(logistic, planted, tmp_path):
    from xmlcore.artifacts import load_autoencoder_state, save_autoencoder_state

    save_autoencoder_state(tmp_path / "ae.npz", logistic.get_state())
    restored = DeepNonNegativeAutoencoder.from_state(load_autoencoder_state(tmp_path / "ae.npz"))
    np.testing.assert_array_equal(restored.label_bias_, logistic.label_bias_)
    W = logistic.transform(planted)
    np.testing.assert_array_equal(restored.inverse_transform(W), logistic.inverse_transform(W))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(label_bias=None),
        lambda s: s.update(label_bias=np.zeros(5, dtype=np.float32)),
        lambda s: s.update(label_bias=np.full(24, np.nan, dtype=np.float32)),
        lambda s: s["config"].update(loss="mse"),
    ],
)
def test_from_state_rejects_a_bias_that_does_not_fit(logistic, mutate):
    state = logistic.get_state()
    mutate(state)
    with pytest.raises(ModelError) as err:
        DeepNonNegativeAutoencoder.from_state(state)
    assert err.value.code == "autoencoder.bad_state"


@pytest.mark.parametrize(("loss", "streamed"), [("mse", True), ("bce", True), ("mse", False)])
def test_sparse_and_dense_training_give_the_same_model(planted, loss, streamed, monkeypatch):
    # issue 12: past DENSE_ENTRIES the fit reads V one densified mini-batch at a time
    # (streamed); a dense V is compressed first, so the batches, the start and the
    # losses are the same either way
    if streamed:
        import xmlcore.autoencoder
        import xmlcore.autoencoder_training

        monkeypatch.setattr(xmlcore.autoencoder, "DENSE_ENTRIES", 0)
        monkeypatch.setattr(xmlcore.autoencoder_training, "DENSE_ENTRIES", 0)
    coo = sp.coo_matrix(planted)  # duplicates and explicit zeros must not matter
    messy = sp.coo_matrix(
        (
            np.r_[coo.data * 0.5, coo.data * 0.5, 0.0],
            (np.r_[coo.row, coo.row, 0], np.r_[coo.col, coo.col, 0]),
        ),
        shape=planted.shape,
    )
    fits = [
        DeepNonNegativeAutoencoder(
            layer_sizes=(8, 3), loss=loss, epochs=4, batch_size=64, seed=3
        ).fit(V)
        for V in (planted, sp.csr_matrix(planted), messy)
    ]
    for other in fits[1:]:
        for a, b in zip(fits[0].H_, other.H_, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert other.history_["val_loss"] == pytest.approx(fits[0].history_["val_loss"], rel=1e-6)
        np.testing.assert_allclose(
            other.transform(sp.csr_matrix(planted)), fits[0].transform(planted), rtol=1e-6
        )


def test_label_batches_densify_each_epoch_a_fresh_permutation(planted):
    from xmlcore.autoencoder_training import LabelBatches

    V = sp.csr_matrix(planted)
    batches = LabelBatches(V, batch_size=64, seed=5)
    orders = []
    for _ in range(3):
        batches.on_epoch_begin()
        rows = [batches[i][0] for i in range(len(batches))]
        assert [len(r) for r in rows] == [64, 64, 64, 64, 44]
        dense = np.concatenate(rows)
        order = batches._order.copy()
        np.testing.assert_array_equal(dense, planted[order])
        orders.append(order)
    assert sorted(orders[0]) == list(range(300)) and not np.array_equal(orders[0], orders[1])
    # a fit resumed at epoch 2 reads epoch 2's batches
    resumed = LabelBatches(V, batch_size=64, seed=5, first_epoch=2)
    resumed.on_epoch_begin()
    np.testing.assert_array_equal(resumed._order, orders[2])


def test_a_big_sparse_label_matrix_is_never_densified():
    import tracemalloc

    # 20,000 x 5,000 labels, 5 a row: dense float32 would be 400 MB
    rng = np.random.default_rng(0)
    n, p = 20_000, 5_000
    V = sp.csr_matrix(
        (np.ones(5 * n, np.float32), (np.repeat(np.arange(n), 5), rng.integers(0, p, 5 * n))),
        shape=(n, p),
    )
    tracemalloc.start()
    try:
        ae = DeepNonNegativeAutoencoder(layer_sizes=(8, 3), epochs=1, batch_size=1024).fit(V)
        ae.codes(V)
        ae.reconstruction_error(V)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 120e6, f"peak {peak / 1e6:.0f} MB"
