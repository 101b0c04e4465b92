"""Baselines: binary relevance and NMF two-step, on the two-step model's CNN body."""

from __future__ import annotations

import numpy as np
import pytest

from xmlcore.baselines import BinaryRelevanceModel, NMFTwoStepModel
from xmlcore.datasets import generate_dishes
from xmlcore.errors import ConfigError, ModelError

NETWORK = {"image_size": (32, 32), "epochs": 2, "batch_size": 16, "head_units": (16,)}


@pytest.fixture(scope="module")
def data():
    return generate_dishes("tiny", seed=1)


@pytest.fixture(scope="module")
def binary(data):
    return BinaryRelevanceModel(**NETWORK).fit(data.images, data.label_space)


@pytest.fixture(scope="module")
def nmf(data):
    model = NMFTwoStepModel(n_components=4, **NETWORK, label_loss="mse")
    return model.fit(data.images, data.label_space)


def _body(network) -> list[str]:
    return [layer.name for layer in network.model_.layers if layer.name.startswith("small_")]


def test_binary_relevance_is_a_sigmoid_per_label(binary, data) -> None:
    scores = binary.predict_scores(data.images[:7])
    assert scores.shape == (7, data.label_space.n_labels) and scores.dtype == np.float32
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    head = binary.network_.model_.get_layer("head_output")
    assert head.activation.__name__ == "sigmoid" and binary.network_.loss == "binary_crossentropy"
    assert len(binary.network_.history_["loss"]) == 2


def test_nmf_two_step_decodes_clipped_codes(nmf, data) -> None:
    images = data.images[:7]
    latent = nmf.predict_latent(images)
    assert latent.shape == (7, 4) and latent.min() >= 0.0
    np.testing.assert_array_equal(latent, np.maximum(nmf.regressor_.predict(images), 0.0))
    scores = nmf.predict_scores(images)
    np.testing.assert_allclose(scores, latent @ nmf.nmf_.components_, rtol=1e-5, atol=1e-6)
    assert nmf.regressor_.model_.get_layer("head_output").activation.__name__ == "linear"
    assert nmf.regressor_.label_loss == "mse" and nmf.regressor_.model_.output.shape[-1] == 4


def test_baselines_share_the_cnn_body(binary, nmf) -> None:
    assert _body(binary.network_) == _body(nmf.regressor_) != []


def test_top_k_ranks_scores(binary, nmf, data) -> None:
    for model in (binary, nmf):
        scores = model.predict_scores(data.images[:3])
        top = model.predict_top_k(data.images[:3], k=4)
        assert [row[0][0] for row in top] == [
            data.label_space.vocabulary[j] for j in scores.argmax(axis=1)
        ]
        assert all(len(row) == 4 for row in top)


def test_bad_settings_and_unfitted_use(data) -> None:
    with pytest.raises(ConfigError) as err:
        NMFTwoStepModel(n_components=1000, **NETWORK).fit(data.images, data.label_space)
    assert err.value.code == "config.n_components"
    with pytest.raises(ModelError):
        BinaryRelevanceModel().predict_top_k(data.images[:1])
    with pytest.raises(ModelError):
        NMFTwoStepModel().predict_scores(data.images[:1])
