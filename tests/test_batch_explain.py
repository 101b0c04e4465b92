"""``xmlcore.batch.explain_images`` runs LIME through ``explain_stream`` in sub-chunks:
the reports must be those of one ``explain`` over the whole batch, in order."""

from __future__ import annotations

import io

import numpy as np
import pytest

from xmlcore.batch import explain_images, stream_chunk_size
from xmlcore.datasets import generate_dishes
from xmlcore.explain import resolve_targets
from xmlcore.methods import TopKLabels, make_explainer
from xmlcore.model import TwoStepModel, train_two_step

N_IMAGES = 7


@pytest.fixture(scope="module")
def tiny() -> tuple[TwoStepModel, np.ndarray]:
    data = generate_dishes("tiny", seed=0, image_size=32)
    model = train_two_step(
        data.images[:16], data.label_space.subset(np.arange(16)), layer_sizes=(8, 4), epochs=1,
        ae_params={"epochs": 5}, regressor_params={"head_units": [8]}, seed=0,
    )  # fmt: skip
    return model, data.images[:N_IMAGES]


def test_sub_chunks_fill_device_batches_within_bounds() -> None:
    assert stream_chunk_size(1000, 256) == 3  # 8 batches of 256 need 3 images of 1,000
    assert stream_chunk_size(40, 16) == 4
    assert stream_chunk_size(10, 256) == 8  # at most 8 images
    assert stream_chunk_size(5000, 16) == 1


def test_lime_in_sub_chunks_gives_the_whole_batch_explanations(tiny) -> None:
    model, images = tiny
    params = {"num_samples": 40, "batch_size": 16, "seed": 3}
    assert stream_chunk_size(40, 16) < N_IMAGES  # several sub-chunks, the last one short
    target = TopKLabels(2)
    reports = explain_images(model, images, target=target, params=params, model_id="m")
    whole = make_explainer("lime", model, params).explain(
        images, resolve_targets(model, images, target)
    )
    assert len(reports) == N_IMAGES
    for i, (report, explanations) in enumerate(zip(reports, whole, strict=True)):
        weights = np.load(io.BytesIO(report.artifacts["weights.npy"]))
        want = np.stack([e.segment_weights for e in explanations]).astype(np.float32)
        # Equal up to float32 rounding (as the device-vs-host tests): the model's
        # outputs and the joint ridge solve depend on the batch's shapes and columns.
        np.testing.assert_allclose(weights, want, rtol=0, atol=1e-7)
        summaries = report.result["explanations"]
        assert [s["provenance"]["image_seed"] for s in summaries] == [
            e.provenance["image_seed"] for e in explanations
        ]
        assert summaries[0]["image_index"] == i
