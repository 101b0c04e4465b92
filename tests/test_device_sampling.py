"""Perturbed images built in the graph (``PerturbingPredictor``) give LIME's answers.

The device path must be the host path moved, not a new method: the same masks, the
same uint8 pixels, hence the same coefficients, whatever the packing of samples into
batches (several images per batch, an image split over batches, images with different
segment counts, adaptive rounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import keras
import numpy as np
import pytest

from xmlcore.datasets import generate_dishes
from xmlcore.errors import ExplainError
from xmlcore.explain import (
    AdaptiveSampling,
    FelzenszwalbSegmenter,
    LimeExplainer,
    OcclusionExplainer,
)
from xmlcore.explain.device_sampling import PerturbingPredictor
from xmlcore.explain.lime import image_seed

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return generate_dishes("tiny", seed=1, n_images=5, image_size=SIZE).images


def host_fn(model: keras.Model):
    return lambda batch: np.asarray(model.predict_on_batch(np.asarray(batch, np.float32)))


def max_diff(a, b) -> float:
    return max(
        float(np.abs(x.segment_weights - y.segment_weights).max())
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


@pytest.mark.parametrize(
    ("num_samples", "batch_size"),
    [(50, 16), (30, 128), (64, 64)],  # image split over batches / several per batch / exact
)
def test_lime_on_the_device_equals_the_host_path(model, images, num_samples, batch_size) -> None:
    segmenter = FelzenszwalbSegmenter(scale=20, min_size=5)  # segment counts differ per image
    counts = {int(segmenter(img).max()) + 1 for img in images}
    assert len(counts) > 1
    kwargs = {"num_samples": num_samples, "batch_size": batch_size, "segmenter": segmenter}
    host = LimeExplainer(host_fn(model), **kwargs).explain(images, [0, 2, 4])
    device = LimeExplainer(PerturbingPredictor(model), **kwargs).explain(images, [0, 2, 4])
    assert max_diff(host, device) < 1e-9
    assert [r[0].top_segments for r in host] == [r[0].top_segments for r in device]


def test_adaptive_rounds_on_the_device_equal_the_host_path(model, images) -> None:
    rule = AdaptiveSampling(min_samples=40, max_samples=160, batch=40, z=0.5)
    host = LimeExplainer(host_fn(model), adaptive=rule, batch_size=32).explain(images, [1])
    device = LimeExplainer(PerturbingPredictor(model), adaptive=rule, batch_size=32).explain(
        images, [1]
    )
    assert [r[0].num_samples for r in host] == [r[0].num_samples for r in device]
    assert max_diff(host, device) < 1e-9


def test_paired_stratified_adaptive_lime_on_the_device_equals_the_host_path(model, images) -> None:
    # The samplers differ only in the mask rows they hand over; this one exercises
    # pairs, stratified counts, odd round sizes and the stability rule at once.
    sampler = "antithetic_stratified"
    rule = AdaptiveSampling(criterion="stability", min_samples=41, max_samples=121, batch=40)
    kwargs = {"adaptive": rule, "batch_size": 32, "sampler": sampler}
    host = LimeExplainer(host_fn(model), **kwargs).explain(images, [1, 3])
    device = LimeExplainer(PerturbingPredictor(model), **kwargs).explain(images, [1, 3])
    assert [r[0].num_samples for r in host] == [r[0].num_samples for r in device]
    assert [r[1].top_segments for r in host] == [r[1].top_segments for r in device]
    # Short rounds: the device pads each batch to batch_size rows (one compiled shape),
    # the host runs them unpadded, and TF's float32 conv rounds by batch shape (~3e-8
    # in an output, a few 1e-9 in a weight).
    assert max_diff(host, device) < 1e-7
    synchronous = PerturbingPredictor(model, asynchronous=False)
    before = LimeExplainer(synchronous, **kwargs).explain(images, [1, 3])
    assert [r[0].top_segments for r in before] == [r[0].top_segments for r in device]
    assert max_diff(before, device) < 1e-7


def test_plain_calls_send_uint8_and_match_the_model(model, images) -> None:
    predictor = PerturbingPredictor(model)
    expected = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    np.testing.assert_allclose(predictor(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor(images[:3]), expected[:3], rtol=1e-5, atol=1e-6)
    floats = images.astype(np.float64) + 0.2  # rounded to the uint8 the model is fed
    np.testing.assert_allclose(predictor(floats), expected, rtol=1e-5, atol=1e-6)
    assert predictor.uint8_model.input.dtype == "uint8"


@pytest.mark.parametrize(("patch", "stride", "batch"), [(8, 8, 256), (12, 5, 7)])
def test_occlusion_windows_on_the_device_equal_the_host_path(
    model, images, patch, stride, batch
) -> None:
    """Boxes built in the graph: overlapping windows, a last window flush with the
    edge, batches that mix images."""
    kwargs = {"patch": patch, "stride": stride, "batch_size": batch}
    host = OcclusionExplainer(host_fn(model), **kwargs).explain(images[:3], [0])
    device = OcclusionExplainer(PerturbingPredictor(model), **kwargs).explain(images[:3], [0])
    for a, b in zip(host, device, strict=True):
        np.testing.assert_allclose(a[0].heatmap, b[0].heatmap, rtol=1e-4, atol=1e-6)


def test_a_model_without_image_input_is_refused() -> None:
    inputs = keras.Input((7,))
    flat = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ExplainError, match="model input"):
        PerturbingPredictor(flat)


class RecordingPredictor(PerturbingPredictor):
    """The real predictor, noting when batches are started and read, and their shapes."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__(model)
        self.events: list[tuple[str, int]] = []
        self.padded_rows: list[int] = []

    def submit_perturbed(self, *args, pad_to=None):
        number = sum(1 for kind, _ in self.events if kind == "submit")
        self.events.append(("submit", number))
        pending = super().submit_perturbed(*args, pad_to=pad_to)
        self.padded_rows.append(self._last_rows)
        read = pending.result

        def result():
            self.events.append(("read", number))
            return read()

        pending.result = result  # type: ignore[method-assign]
        return pending

    def _perturbed_inputs(self, *args):
        inputs = super()._perturbed_inputs(*args)
        self._last_rows = len(inputs[3])
        return inputs


def test_the_next_batch_is_started_before_the_last_is_read_and_shapes_stay_fixed(
    model, images
) -> None:
    predictor = RecordingPredictor(model)
    LimeExplainer(predictor, num_samples=50, batch_size=48).explain(images, [0])
    submits = [n for kind, n in predictor.events if kind == "submit"]
    assert len(submits) == -(-5 * 49 // 48)  # row 0 of each image is the known original
    for n in submits[1:]:  # batch n is read only once batch n + 1 is on its way
        assert predictor.events.index(("submit", n)) < predictor.events.index(("read", n - 1))
    assert predictor.events[-1] == ("read", submits[-1])
    assert set(predictor.padded_rows) == {64}  # the short last batch is padded too


def test_submitted_batches_equal_predicted_ones_and_check_their_padding(model, images) -> None:
    predictor = PerturbingPredictor(model)
    segments = np.stack([FelzenszwalbSegmenter()(img) for img in images[:2]])
    masks = np.random.RandomState(0).randint(0, 2, (7, int(segments.max()) + 1)).astype(np.uint8)
    rows = np.array([0, 1, 1, 0, 1, 0, 0], np.int32)
    fills = images[:2] // 2
    args = (images[:2], fills, segments, masks, rows)
    expected = predictor.predict_perturbed(*args)
    np.testing.assert_array_equal(predictor.submit_perturbed(*args, pad_to=32).result(), expected)
    with pytest.raises(ExplainError, match="pad_to"):
        predictor.submit_perturbed(*args, pad_to=3)


@pytest.mark.parametrize("chunking", [(2, 3), (1, 1, 1, 1, 1)])
def test_a_stream_of_chunks_equals_explaining_each_chunk(model, images, chunking) -> None:
    """The overlapped pipeline is the sequential one reordered: same coefficients,
    stability and provenance, chunk by chunk (image seeds count within a chunk)."""
    kwargs = {"num_samples": 40, "batch_size": 32}
    edges = np.cumsum((0, *chunking))
    chunks = [(images[a:b], [0, 3]) for a, b in pairwise(edges)]
    for predict in (host_fn(model), PerturbingPredictor(model)):
        explainer = LimeExplainer(predict, **kwargs)
        streamed = list(explainer.explain_stream(iter(chunks)))
        one_by_one = [explainer.explain(chunk, targets) for chunk, targets in chunks]
        assert len(streamed) == len(chunks)
        for got, want in zip(streamed, one_by_one, strict=True):
            assert max_diff(got, want) == 0.0
            assert [r[1].metrics for r in got] == [r[1].metrics for r in want]
            assert [r[0].provenance for r in got] == [r[0].provenance for r in want]
    assert list(LimeExplainer(host_fn(model)).explain_stream([])) == []


def test_a_failing_chunk_comes_after_every_chunk_before_it(model, images) -> None:
    explainer = LimeExplainer(PerturbingPredictor(model), num_samples=20, batch_size=16)
    chunks = [(images[:2], [0]), (images[2:4], [0]), (images[4:], [99])]  # 5 outputs
    got = []
    with pytest.raises(ExplainError):
        for explained in explainer.explain_stream(chunks):
            got.append(explained)
    assert len(got) == 2
    assert max_diff(got[1], explainer.explain(images[2:4], [0])) == 0.0


def test_adaptive_lime_in_a_stream_equals_each_chunk(model, images) -> None:
    rule = AdaptiveSampling(min_samples=40, max_samples=120, batch=40, z=0.5)
    explainer = LimeExplainer(PerturbingPredictor(model), adaptive=rule, batch_size=32)
    chunks = [(images[:2], [1]), (images[2:], [1])]
    streamed = list(explainer.explain_stream(chunks))
    for got, (chunk, targets) in zip(streamed, chunks, strict=True):
        want = explainer.explain(chunk, targets)
        assert [r[0].num_samples for r in got] == [r[0].num_samples for r in want]
        assert max_diff(got, want) == 0.0


JAX_SCRIPT = """
import json
import keras, numpy as np
from xmlcore.datasets import generate_dishes
from xmlcore.explain import LimeExplainer
from xmlcore.explain.device_sampling import PerturbingPredictor
from xmlcore.explain.lime import image_seed
keras.utils.set_random_seed(3)
inputs = keras.Input((32, 32, 3))
x = keras.layers.Conv2D(6, 3, activation="tanh")(keras.layers.Rescaling(1 / 255.0)(inputs))
model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x)))
images = generate_dishes("tiny", seed=1, n_images=3, image_size=32).images
host = lambda b: np.asarray(model.predict_on_batch(np.asarray(b, np.float32)))
chunks = [(images[:1], [0, 2]), (images[1:], [0, 2])]
kw = dict(num_samples=50, batch_size=32)
want = [LimeExplainer(host, **kw).explain(c, t) for c, t in chunks]
got = list(LimeExplainer(PerturbingPredictor(model), **kw).explain_stream(chunks))
sync = LimeExplainer(PerturbingPredictor(model, asynchronous=False), **kw)
before = [sync.explain(c, t) for c, t in chunks]
def diff(u, v):
    return max(float(np.abs(x.segment_weights - y.segment_weights).max())
               for cu, cv in zip(u, v) for ru, rv in zip(cu, cv) for x, y in zip(ru, rv))
print(json.dumps({"backend": keras.backend.backend(), "host": diff(want, got),
                  "synchronous": diff(before, got)}))
"""


def test_the_asynchronous_jax_path_gives_the_host_paths_coefficients() -> None:
    """On JAX (the GPU machine's backend) batches are dispatched without waiting: a
    jitted ``stateless_call``, not ``predict_on_batch``. Its answers must be the same."""
    env = dict(os.environ, KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["backend"] == "jax"
    # Against the pipeline before and the host path: equal up to float32 rounding,
    # which on XLA's CPU convolution depends on the padded batch shape.
    assert row["synchronous"] < 1e-7
    assert row["host"] < 1e-7


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_consecutive_stream_equals_explaining_the_whole_batch(model, images, engine) -> None:
    """``consecutive=True``: the chunks are one batch cut in order, so image seeds count
    on across chunks and one base seed serves them all (also when drawn: seed=None)."""
    kwargs = {"num_samples": 40, "batch_size": 32, "engine": engine}
    chunks = [(images[:2], [0, 3]), (images[2:3], [0, 3]), (images[3:], [0, 3])]
    explainer = LimeExplainer(host_fn(model), **kwargs)
    streamed = [row for part in explainer.explain_stream(chunks, consecutive=True) for row in part]
    whole = explainer.explain(images, [0, 3])
    # Up to float32 rounding: the model's outputs depend on the batch shapes, and here
    # the originals go to it in chunks, not all at once.
    assert max_diff(streamed, whole) < 1e-7
    assert [r[0].provenance for r in streamed] == [r[0].provenance for r in whole]
    assert [r[1].top_segments for r in streamed] == [r[1].top_segments for r in whole]
    drawn = LimeExplainer(host_fn(model), **{**kwargs, "seed": None})
    parts = list(drawn.explain_stream(chunks, consecutive=True))
    seeds = {r[0].provenance["seed"] for part in parts for r in part}
    image_seeds = [r[0].provenance["image_seed"] for part in parts for r in part]
    assert len(seeds) == 1
    assert image_seeds == [image_seed(next(iter(seeds)), i) for i in range(5)]
