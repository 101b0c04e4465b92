"""Input and layer gradients of a Keras model, for every Keras backend.

This is the only module of xmlcore that touches TensorFlow, JAX or PyTorch, and it
imports the active backend's library lazily, inside the function that needs it, so a
process running Keras on JAX never loads TensorFlow (and the other way round).

Both functions differentiate the scalar ``sum_n sum_j w[n, j] * out[n, j]``. Images of a
batch do not interact in inference mode, so row ``n`` of the gradient is the gradient of
``w[n] . out[n]`` with respect to image ``n`` alone: one call answers a different target
(a one-hot row of ``w``) for every row of the batch.

Layer gradients (for Grad-CAM) intercept the named layer's output while the whole model
runs, instead of cutting the model in two, so layers nested inside sub-models (a
backbone inside the regressor inside the two-step model) work the same as top-level
ones. The layer must be called once per forward pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from xmlcore.errors import ExplainError
from xmlcore.explain.device_sampling import bucket, pad_rows

_Capture = dict[str, Any]


def gradients(model: keras.Model, images: np.ndarray, output_weights: np.ndarray) -> np.ndarray:
    """``d(sum_j w[n, j] * out[n, j]) / d images[n]`` for every row ``n``.

    ``images`` float32 ``(N, H, W, 3)`` raw 0..255 pixels (any input shape works);
    ``output_weights`` ``(N, m)`` with ``m`` the model's output width. Returns float32
    with the shape of ``images``.
    """
    x, w = _check(images, output_weights)
    grad_fn = _backend_functions()[0]
    return np.asarray(grad_fn(model, x, w), dtype=np.float32)


def layer_gradients(
    model: keras.Model, layer_name: str, images: np.ndarray, output_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Activations of layer ``layer_name`` and the gradient of the weighted output there.

    Returns ``(activations, grads)``, both float32 with the layer's output shape
    (``(N, h, w, c)`` for a convolution). The layer is looked up in nested models too.
    """
    x, w = _check(images, output_weights)
    layer = find_layer(model, layer_name)
    layer_fn = _backend_functions()[1]
    acts, grads = layer_fn(model, layer, x, w)
    return np.asarray(acts, dtype=np.float32), np.asarray(grads, dtype=np.float32)


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called ``name`` in ``model`` or in any model nested inside it."""
    for layer in iter_layers(model):
        if layer.name == name:
            return layer
    raise ExplainError("explain.unknown_layer", f"the model has no layer named {name!r}")


def iter_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` depth-first, in the order of ``model.layers``."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from iter_layers(layer)


def _backend_functions() -> tuple[Callable[..., Any], Callable[..., Any]]:
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise ExplainError(
            "explain.unsupported_backend",
            f"gradient methods need the tensorflow, jax or torch Keras backend, not {name!r}",
        )
    return _BACKENDS[name]


def _check(images: np.ndarray, output_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, dtype=np.float32)
    w = np.asarray(output_weights, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] != x.shape[0]:
        raise ExplainError(
            "explain.bad_output_weights",
            f"output_weights must be (N, m) with N={x.shape[0]}, got {w.shape}",
        )
    return x, w


def _objective(outputs: Any, weights: Any) -> Any:
    """``sum(w * out)``; a model with several outputs is read as their concatenation."""
    if isinstance(outputs, list | tuple):
        outputs = keras.ops.concatenate(
            [keras.ops.reshape(o, (keras.ops.shape(o)[0], -1)) for o in outputs], axis=-1
        )
    if outputs.shape[-1] != weights.shape[-1]:
        raise ExplainError(
            "explain.bad_output_weights",
            f"output_weights has {weights.shape[-1]} columns, the model {outputs.shape[-1]}",
        )
    return keras.ops.sum(outputs * weights)


@contextmanager
def _intercept(layer: keras.layers.Layer, offset: Any = None) -> Iterator[_Capture]:
    """Record ``layer``'s output while inside; add ``offset`` to it when one is given.

    Adding a zero offset and differentiating with respect to it is how JAX, which has
    no tape, gets the gradient at an intermediate tensor.
    """
    capture: _Capture = {}
    original: Callable[..., Any] = layer.call

    def call(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if offset is not None:
            out = out + offset
        capture["output"] = out
        return out

    layer.call = call
    try:
        yield capture
    finally:
        del layer.call
    if "output" not in capture:
        raise ExplainError(
            "explain.unknown_layer", f"layer {layer.name!r} was not called by the model"
        )


# --- TensorFlow ------------------------------------------------------------------------


def _tf_gradients(model: keras.Model, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        objective = _objective(model(xt, training=False), tf.convert_to_tensor(w))
    return tape.gradient(objective, xt).numpy()


def _tf_layer(
    model: keras.Model, layer: keras.layers.Layer, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape, _intercept(layer) as capture:
        tape.watch(xt)
        objective = _objective(model(xt, training=False), tf.convert_to_tensor(w))
    acts = capture["output"]
    return acts.numpy(), tape.gradient(objective, acts).numpy()


# --- JAX -------------------------------------------------------------------------------


def _jax_state(model: keras.Model) -> tuple[list[Any], list[Any]]:
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )


# One compiled gradient function per model, traced once per (padded) batch shape: run
# eagerly, JAX dispatched VGG16's backward pass op by op, ~50x slower on an H200.
_JAX_GRADIENT_FNS: weakref.WeakKeyDictionary[keras.Model, Callable[..., Any]] = (
    weakref.WeakKeyDictionary()
)


def _jax_gradient_fn(model: keras.Model) -> Callable[..., Any]:
    import jax

    fn = _JAX_GRADIENT_FNS.get(model)
    if fn is None:

        def objective(inputs: Any, trainable: Any, non_trainable: Any, weights: Any) -> Any:
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
            return _objective(outputs, weights)

        fn = jax.jit(jax.grad(objective))
        _JAX_GRADIENT_FNS[model] = fn
    return fn


def _padded(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batches padded to a power of two (few shapes, few compilations); padding rows
    get zero output weights, hence zero gradients, and are cut off by the caller."""
    size = bucket(len(x))
    return pad_rows(x, size), pad_rows(w, size)


def _jax_gradients(model: keras.Model, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    n = len(x)
    x, w = _padded(x, w)
    trainable, non_trainable = _jax_state(model)
    return np.asarray(_jax_gradient_fn(model)(x, trainable, non_trainable, w))[:n]


_JAX_LAYER_FNS: weakref.WeakKeyDictionary[keras.Model, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _jax_layer_fns(
    model: keras.Model, layer: keras.layers.Layer, shape: tuple[int, ...]
) -> tuple[Any, Any]:
    """(compiled gradient at the layer, the layer's output spec) for one input shape.

    The layer is intercepted while JAX traces, which happens once per shape; after
    that the compiled function runs without Python in the loop (Grad-CAM was eager)."""
    import jax

    per_model = _JAX_LAYER_FNS.setdefault(model, {})
    key = (layer.name, shape)
    if key not in per_model:

        def objective(offset: Any, trainable: Any, non_trainable: Any, x: Any, w: Any) -> Any:
            with _intercept(layer, offset) as capture:
                outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return _objective(outputs, w), capture["output"]

        def output_of_layer(trainable: Any, non_trainable: Any, x: Any) -> Any:
            with _intercept(layer) as capture:
                model.stateless_call(trainable, non_trainable, x, training=False)
            return capture["output"]

        trainable, non_trainable = _jax_state(model)
        x = jax.ShapeDtypeStruct(shape, "float32")
        spec = jax.eval_shape(output_of_layer, trainable, non_trainable, x)
        per_model[key] = (jax.jit(jax.grad(objective, has_aux=True)), spec)
    return per_model[key]


def _jax_layer(
    model: keras.Model, layer: keras.layers.Layer, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    import jax

    n = len(x)
    x, w = _padded(x, w)
    grad_fn, spec = _jax_layer_fns(model, layer, x.shape)
    trainable, non_trainable = _jax_state(model)
    zeros = jax.numpy.zeros(spec.shape, spec.dtype)
    grads, acts = grad_fn(zeros, trainable, non_trainable, x, w)
    return np.asarray(acts)[:n], np.asarray(grads)[:n]


# --- PyTorch ---------------------------------------------------------------------------


def _torch_gradients(model: keras.Model, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    import torch

    xt = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        objective = _objective(model(xt, training=False), keras.ops.convert_to_tensor(w))
        (grad,) = torch.autograd.grad(objective, [xt])
    return grad.detach().cpu().numpy()


def _torch_layer(
    model: keras.Model, layer: keras.layers.Layer, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    xt = keras.ops.convert_to_tensor(x)
    with torch.enable_grad(), _intercept(layer) as capture:
        objective = _objective(model(xt, training=False), keras.ops.convert_to_tensor(w))
    acts = capture["output"]
    (grad,) = torch.autograd.grad(objective, [acts])
    return acts.detach().cpu().numpy(), grad.detach().cpu().numpy()


_BACKENDS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "tensorflow": (_tf_gradients, _tf_layer),
    "jax": (_jax_gradients, _jax_layer),
    "torch": (_torch_gradients, _torch_layer),
}
