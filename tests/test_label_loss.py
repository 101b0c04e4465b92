"""The decoder-aware label-space loss of the latent regressor (xmlcore.label_loss)."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from xmlcore.errors import ConfigError
from xmlcore.label_loss import check_decoder_inputs, label_space_loss, label_weights
from xmlcore.metrics import propensities


def test_loss_is_latent_mse_plus_normalised_weighted_label_mse() -> None:
    rng = np.random.default_rng(0)
    d, p, n = 3, 5, 4
    labels = (rng.random((n, p)) < 0.4).astype("float32")
    weights = np.array([1.0, 2.0, 0.5, 1.0, 0.5], dtype="float32")
    y_true = np.concatenate([rng.normal(size=(n, d)), labels], axis=1).astype("float32")
    y_pred = rng.normal(size=(n, d + p)).astype("float32")
    loss = label_space_loss(d, weights, labels, label_weight=2.0)
    got = np.asarray(ops.convert_to_numpy(loss(y_true, y_pred)))
    baseline = np.mean(weights * labels**2)
    latent = np.mean((y_true[:, :d] - y_pred[:, :d]) ** 2, axis=1)
    label = np.mean(weights * (y_true[:, d:] - y_pred[:, d:]) ** 2, axis=1)
    np.testing.assert_allclose(got, latent + 2.0 * label / baseline, rtol=1e-5)
    # label_weight 0 is the paper's latent MSE
    zero = label_space_loss(d, weights, labels, label_weight=0.0)
    np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(zero(y_true, y_pred))), latent,
                               rtol=1e-5)  # fmt: skip


def test_auxiliary_codes_add_their_weighted_mse_and_labels_may_be_absent() -> None:
    rng = np.random.default_rng(1)
    d, a, p, n = 2, 3, 4, 5
    labels = (rng.random((n, p)) < 0.5).astype("float32")
    weights = np.ones(p, dtype="float32")
    y_true = np.concatenate([rng.normal(size=(n, d + a)), labels], axis=1).astype("float32")
    y_pred = rng.normal(size=(n, d + a + p)).astype("float32")
    loss = label_space_loss(d, weights, labels, label_weight=1.0, aux_dim=a, aux_weight=0.5)
    got = np.asarray(ops.convert_to_numpy(loss(y_true, y_pred)))
    sq = (y_true - y_pred) ** 2
    label = np.mean(sq[:, d + a :], axis=1) / np.mean(labels**2)
    expected = np.mean(sq[:, :d], axis=1) + 0.5 * np.mean(sq[:, d : d + a], axis=1) + label
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # no label columns (the paper's latent MSE) with the auxiliary codes only
    bare = label_space_loss(d, np.ones(0, "float32"), np.zeros((n, 0), "float32"), 1.0, a, 2.0)
    got = np.asarray(ops.convert_to_numpy(bare(y_true[:, : d + a], y_pred[:, : d + a])))
    np.testing.assert_allclose(
        got, np.mean(sq[:, :d], axis=1) + 2.0 * np.mean(sq[:, d : d + a], axis=1), rtol=1e-5
    )


def test_propensity_weights_favour_rare_labels_with_mean_one() -> None:
    labels = np.zeros((50, 4), dtype="float32")
    labels[:, 0] = 1
    labels[:25, 1] = 1
    labels[:5, 2] = 1
    labels[:1, 3] = 1
    np.testing.assert_array_equal(label_weights(labels, "mse", 1.0), np.ones(4))
    weights = label_weights(labels, "propensity_mse", 1.0)
    assert weights.mean() == pytest.approx(1.0) and np.all(np.diff(weights) > 0)
    expected = 1.0 / propensities(labels)
    np.testing.assert_allclose(weights, expected / expected.mean(), rtol=1e-6)
    sharper = label_weights(labels, "propensity_mse", 2.0)
    assert sharper[3] / sharper[0] > weights[3] / weights[0]


def test_decoder_inputs_are_checked() -> None:
    D, V, bias = check_decoder_inputs(np.ones((2, 3)), np.zeros((4, 3)), latent_dim=2, n_rows=4)
    assert D.dtype == V.dtype == np.float32 and bias is None
    bad = [
        (None, np.zeros((4, 3))),
        (np.ones((2, 3)), None),
        (np.ones((3, 3)), np.zeros((4, 3))),
        (np.ones((2, 3)), np.zeros((4, 2))),
        (np.full((2, 3), np.nan), np.zeros((4, 3))),
    ]
    for decoder, labels in bad:
        with pytest.raises(ConfigError) as err:
            check_decoder_inputs(decoder, labels, latent_dim=2, n_rows=4)
        assert err.value.code == "config.decoder"


def test_logistic_decoder_label_term_is_cross_entropy_normalised_at_the_bias() -> None:
    rng = np.random.default_rng(2)
    d, p, n = 2, 4, 6
    labels = (rng.random((n, p)) < 0.5).astype("float32")
    weights = np.array([1.0, 0.5, 2.0, 0.5], dtype="float32")
    bias = np.array([-1.0, 0.5, -2.0, 0.0], dtype="float32")
    y_true = np.concatenate([rng.normal(size=(n, d)), labels], axis=1).astype("float32")
    y_pred = rng.normal(size=(n, d + p)).astype("float32")
    loss = label_space_loss(d, weights, labels, label_weight=1.5, bias=bias)
    got = np.asarray(ops.convert_to_numpy(loss(y_true, y_pred)))

    def bce(y, logits):
        return np.log1p(np.exp(logits)) - y * logits

    baseline = np.mean(weights * bce(labels, bias[None, :]))
    latent = np.mean((y_true[:, :d] - y_pred[:, :d]) ** 2, axis=1)
    label = np.mean(weights * bce(y_true[:, d:], y_pred[:, d:]), axis=1)
    np.testing.assert_allclose(got, latent + 1.5 * label / baseline, rtol=1e-4)


def test_decoder_bias_is_checked() -> None:
    D, V = np.ones((2, 3)), np.zeros((4, 3))
    _, _, bias = check_decoder_inputs(D, V, latent_dim=2, n_rows=4, bias=np.zeros(3))
    assert bias is not None and bias.dtype == np.float32
    for bad in (np.zeros(2), np.array([0.0, np.inf, 0.0])):
        with pytest.raises(ConfigError) as err:
            check_decoder_inputs(D, V, latent_dim=2, n_rows=4, bias=bad)
        assert err.value.code == "config.decoder"


def test_sparse_labels_give_the_same_loss_and_stay_sparse_until_a_batch() -> None:
    import scipy.sparse as sp

    from xmlcore.pipeline import ArrayBatches, SparseTargets, take_rows

    # issue 12: the label term's targets hold the labels as CSR, densified per batch
    rng = np.random.default_rng(3)
    d, p, n = 2, 5, 7
    labels = (rng.random((n, p)) < 0.4).astype("float32")
    latent = rng.normal(size=(n, d)).astype("float32")
    weights = np.array([1.0, 2.0, 0.5, 1.0, 0.5], dtype="float32")
    y_true = np.concatenate([latent, labels], axis=1)
    y_pred = rng.normal(size=(n, d + p)).astype("float32")
    for bias in (None, np.array([-1.0, 0.5, -2.0, 0.0, 1.0], dtype="float32")):
        dense, sparse = (
            np.asarray(ops.convert_to_numpy(label_space_loss(d, weights, v, 1.0, bias=bias)(
                y_true, y_pred)))
            for v in (labels, sp.csr_matrix(labels))
        )  # fmt: skip
        np.testing.assert_allclose(sparse, dense, rtol=1e-6)
    _, V, _ = check_decoder_inputs(np.ones((d, p)), sp.csr_matrix(labels), d, n)
    assert sp.issparse(V) and V.dtype == np.float32
    targets = SparseTargets(latent, V)
    assert targets.shape == (n, d + p) and len(take_rows(targets, [0, 2])) == 2
    batches = ArrayBatches(np.zeros((n, 4, 4, 3), np.uint8), targets, batch_size=3, shuffle=True)
    assert isinstance(batches.targets, SparseTargets)
    got = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(got, y_true[batches._order])
