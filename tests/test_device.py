"""xmlcore.device: the batch size that fits the free GPU memory (pure arithmetic,
tested without a GPU), the activation estimate it uses, and the precision settings a
GPU worker trains with (mixed bfloat16 is checked to train on the CPU)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xmlcore.backbones import build_backbone
from xmlcore.datasets import generate_dishes
from xmlcore.device import (
    batch_size_for_memory,
    configure_accelerator,
    forward_bytes_per_sample,
    jit_compile,
)
from xmlcore.model import train_two_step

GIB = 1024**3


def test_batch_size_follows_free_memory() -> None:
    per_sample = 100 * 1024**2  # 100 MiB of activations per image
    assert batch_size_for_memory(10 * GIB, per_sample) == 56  # 0.6 x 10 GiB = 61.4 -> 56
    assert batch_size_for_memory(10 * GIB, per_sample, share=1.0) == 96  # 102 -> 96
    assert batch_size_for_memory(20 * GIB, per_sample) == 2 * 56 + 8  # 122 -> 120
    assert batch_size_for_memory(10 * GIB, per_sample, fixed_bytes=5 * GIB) == 8  # 11 -> 8
    assert batch_size_for_memory(600 * 1024**2, per_sample) == 3  # below 8: not rounded
    assert batch_size_for_memory(0, per_sample) == 1  # never zero
    assert batch_size_for_memory(140 * GIB, 1024) == 1024  # capped
    with pytest.raises(ValueError):
        batch_size_for_memory(GIB, 0)


def test_forward_bytes_count_every_layer_output() -> None:
    backbone = build_backbone("small", "none", (32, 32, 3))
    elements = 0
    for layer in backbone.layers:
        elements += int(np.prod(layer.output.shape[1:]))
    assert forward_bytes_per_sample(backbone) == 4 * elements
    assert forward_bytes_per_sample(backbone, dtype_bytes=2) == 2 * elements
    bigger = build_backbone("small", "none", (64, 64, 3))
    assert forward_bytes_per_sample(bigger) == 4 * forward_bytes_per_sample(backbone)


def test_on_a_cpu_nothing_changes() -> None:
    setup = configure_accelerator(mixed_precision=True, xla=False)
    assert setup.gpus == 0
    assert keras.mixed_precision.global_policy().name == "float32"
    assert jit_compile() == "auto"  # Keras' own choice: no XLA on a CPU


def test_mixed_bfloat16_trains_with_a_float32_output() -> None:
    data = generate_dishes("tiny", seed=0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = train_two_step(
            data.images, data.label_space, layer_sizes=(8, 4), ae_params={"epochs": 3},
            epochs=1, batch_size=16, regressor_params={"head_units": (16,)},
        )  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy("float32")
    network = model.regressor.model_
    assert network.output.dtype == "float32"
    assert any(layer.compute_dtype == "bfloat16" for layer in network.layers)
    scores = model.predict_scores(data.images[:4])
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
