"""Training checkpoints (xmlcore.checkpoint): every epoch of both stages, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from xmlcore.checkpoint import StageCheckpoint
from xmlcore.datasets import generate_dishes
from xmlcore.errors import ModelError
from xmlcore.model import train_two_step
from xmlcore.records import ImageRecordFile, RecordBatches

EPOCHS = 4


@pytest.fixture(scope="module")
def data():
    tiny = generate_dishes("tiny", seed=0)
    return tiny.images, tiny.label_space


def _train(data, **kwargs):
    images, space = data
    return train_two_step(
        images, space, layer_sizes=(6, 3), ae_params={"epochs": 5, "patience": 50},
        epochs=EPOCHS, batch_size=16, seed=1,
        regressor_params={"head_units": [8], "patience": 50}, **kwargs,
    )  # fmt: skip


def test_every_epoch_of_both_stages_is_checkpointed_and_round_trips(data) -> None:
    saved: list[StageCheckpoint] = []
    _train(data, checkpoint=saved.append)
    stages = [(c.stage, c.epoch) for c in saved]
    assert stages == [("autoencoder", e) for e in range(1, 6)] + [
        ("regressor", e) for e in range(1, EPOCHS + 1)
    ]
    last = StageCheckpoint.from_bytes(saved[-1].to_bytes())
    assert last.autoencoder is not None and last.optimizer and last.best_weights is not None
    assert len(last.history["loss"]) == EPOCHS
    for a, b in zip(last.weights, saved[-1].weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ModelError, match="checkpoint"):
        StageCheckpoint.from_bytes(b"not a checkpoint")


def test_a_resumed_training_trains_only_the_epochs_left(data) -> None:
    saved: list[StageCheckpoint] = []
    full = _train(data, checkpoint=saved.append)
    mid = next(c for c in saved if c.stage == "regressor" and c.epoch == 2)
    epochs_run: list[int] = []
    resumed = _train(
        data, resume=StageCheckpoint.from_bytes(mid.to_bytes()),
        on_epoch=lambda stage, epoch, _: epochs_run.append(epoch) if stage == "regressor" else None,
    )  # fmt: skip
    assert epochs_run == [2, 3]  # epochs 3 and 4 (0-based), nothing of the autoencoder
    assert len(resumed.metadata.history["regressor"]["loss"]) == EPOCHS
    np.testing.assert_allclose(resumed.autoencoder.H_[0], full.autoencoder.H_[0], rtol=0, atol=0)
    images, _ = data
    diff = np.abs(resumed.predict_latent(images) - full.predict_latent(images)).mean()
    assert diff < 0.5 * np.abs(full.predict_latent(images)).mean()


def test_record_batches_read_what_was_written(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    records = ImageRecordFile.create(tmp_path / "r.u8", 7, (32, 32))
    for i, image in enumerate(images):
        records.write(i, image)
    batches = RecordBatches(records, np.array([6, 2, 4]), np.zeros((3, 2)), batch_size=2)
    pixels, targets = batches[0]
    np.testing.assert_array_equal(pixels, images[[6, 2]].astype("float32"))
    sub = batches.subset(np.array([2]))
    np.testing.assert_array_equal(sub[0][0][0], images[4].astype("float32"))
    assert targets.shape == (2, 2)


def test_a_resumed_training_keeps_the_code_size_it_chose(data) -> None:
    images, space = data
    saved: list[StageCheckpoint] = []
    params = {"ae_params": {"epochs": 3}, "epochs": 2, "batch_size": 16,
              "regressor_params": {"head_units": [8]}}  # fmt: skip
    full = train_two_step(images, space, checkpoint=saved.append, **params)  # sizes chosen
    assert full.metadata.metrics["code_size_chosen"] == 1.0
    for stage in ("autoencoder", "regressor"):
        mid = next(c for c in saved if c.stage == stage)
        resumed = train_two_step(
            images, space, resume=StageCheckpoint.from_bytes(mid.to_bytes()), **params
        )
        assert resumed.metadata.layer_sizes == full.metadata.layer_sizes
        assert resumed.metadata.metrics["code_size_resumed"] == 1.0
