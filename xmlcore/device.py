"""The accelerator: is there one, how much memory is free, what batch fits, and the
precision and compilation settings models are built and trained with.

Like ``backend_gradients``, this module imports the active Keras backend's library
(TensorFlow, JAX or PyTorch) lazily, inside the function that needs it.

``batch_size_for_memory`` is pure arithmetic, so a worker can choose its forward batch
from the free memory it measured, and a test can check the choice without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras

# Memory a batch may use, as a share of what is free: the framework's workspace
# (cuDNN/XLA scratch), fragmentation and the copy of the next batch need the rest.
DEFAULT_MEMORY_SHARE = 0.6
MAX_BATCH = 1024
_jit_compile: bool | str = "auto"


@dataclass(frozen=True)
class AcceleratorSetup:
    """What ``configure_accelerator`` found and chose (JSON-ready via ``vars``)."""

    backend: str
    gpus: int
    precision_policy: str
    jit_compile: bool | str


def batch_size_for_memory(
    free_bytes: int,
    bytes_per_sample: int,
    *,
    fixed_bytes: int = 0,
    share: float = DEFAULT_MEMORY_SHARE,
    multiple: int = 8,
    maximum: int = MAX_BATCH,
) -> int:
    """The largest batch whose activations fit in ``share`` of ``free_bytes`` after
    ``fixed_bytes`` (weights already resident elsewhere count as used, not free).

    Rounded down to a multiple of ``multiple`` (tensor cores work in tiles of 8) once it
    is at least that large; never below 1 or above ``maximum``. A fixed batch size
    also means one compiled program per model, not one per batch shape.
    """
    if free_bytes < 0 or bytes_per_sample <= 0 or not 0 < share <= 1 or multiple < 1:
        raise ValueError("free_bytes >= 0, bytes_per_sample > 0, 0 < share <= 1, multiple >= 1")
    usable = free_bytes * share - fixed_bytes
    fits = math.floor(usable / bytes_per_sample) if usable > 0 else 0
    if fits >= multiple:
        fits -= fits % multiple
    return max(1, min(maximum, fits))


def forward_bytes_per_sample(model: keras.Model, dtype_bytes: int = 4) -> int:
    """An upper bound on one input's activation memory in a forward pass: the sum of
    every layer's output size (nested models included) times ``dtype_bytes``."""
    total = 0
    for layer in _all_layers(model):
        for output in _outputs(layer):
            shape = getattr(output, "shape", None)
            if shape is not None:
                total += math.prod(int(d) for d in shape[1:] if d is not None)
    return max(1, total * dtype_bytes)


def configure_accelerator(*, mixed_precision: bool, xla: bool) -> AcceleratorSetup:
    """On a GPU: mixed precision (``mixed_bfloat16``: bfloat16 compute, float32 weights;
    no loss scaling needed) when ``mixed_precision``, and XLA compilation unless not
    ``xla``. On a CPU nothing changes: bfloat16 is slow there and XLA rarely helps.
    Call before building or loading models; it sets Keras' global policy."""
    global _jit_compile
    gpus = gpu_count()
    if gpus and mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    _jit_compile = "auto" if (xla or not gpus) else False
    return AcceleratorSetup(
        keras.backend.backend(), gpus, keras.mixed_precision.global_policy().name, _jit_compile
    )


def jit_compile() -> bool | str:
    """The ``jit_compile`` argument for ``Model.compile``: Keras' ``"auto"`` (XLA on a
    GPU) unless ``configure_accelerator`` turned it off."""
    return _jit_compile


def gpu_count() -> int:
    """GPUs the active Keras backend sees."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return int(torch.cuda.device_count())
    return 0


def free_accelerator_memory() -> int | None:
    """Free bytes on the first GPU as the backend reports them, or None (no GPU, or a
    backend that cannot tell: TensorFlow reports only its own use; ask nvidia-smi)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        stats = gpus[0].memory_stats() if gpus else None
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    return None


def accelerator_memory_in_use() -> int | None:
    """Bytes in use on the first GPU by this process's backend, or None when it cannot
    tell (no GPU)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        stats = gpus[0].memory_stats() if gpus else None
        return int(stats["bytes_in_use"]) if stats and "bytes_in_use" in stats else None
    if backend == "torch":
        import torch

        return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["current"])
    return None


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in getattr(model, "layers", []):
        layers.extend(_all_layers(layer) if hasattr(layer, "layers") else [layer])
    return layers


def _outputs(layer: Any) -> list[Any]:
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return []
    return list(output) if isinstance(output, list | tuple) else [output]
