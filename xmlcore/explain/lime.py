"""LIME over superpixels, batched across images and answering many targets at once.

Semantics are those of the ``lime`` package (Ribeiro et al.): row 0 is the unperturbed
image, the other rows keep each superpixel with probability 0.5, a hidden superpixel
takes its mean colour (or a given colour), rows are weighted by
``sqrt(exp(-d^2 / w^2))`` of their cosine distance ``d`` to the all-ones row, and a
weighted ``Ridge(alpha=1)`` over all superpixels gives one weight per superpixel.
``engine="fast"`` (default) computes exactly that, with the same masks for the same
seed, but builds perturbed images vectorised in uint8, packs the samples of several
images into each forward batch and solves one ridge system for every target;
``engine="reference"`` runs ``lime`` itself (see ``reference.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import metadata
from typing import Any

import numpy as np

from xmlcore.errors import ConfigError
from xmlcore.explain.adaptive import AdaptiveSampling, StabilityTracker
from xmlcore.explain.base import Explainer, PredictFn, Targets, check_images, normalize_targets
from xmlcore.explain.reference import explain_with_lime
from xmlcore.explain.result import Explanation, TargetInfo
from xmlcore.explain.samplers import SAMPLERS, draw_sampler_masks, resampling_groups
from xmlcore.explain.sampling import (
    Fill,
    SampleRequest,
    cosine_distances_to_ones,
    exponential_kernel,
    fill_image,
    predict_outputs,
    run_requests,
    stack_images,
)
from xmlcore.explain.segmentation import Segmenter, SlicSegmenter, segment_hash
from xmlcore.explain.stability import bootstrap_stability, stability_ks
from xmlcore.explain.surrogate import RidgeFit, fit_weighted_ridge

ENGINES = ("fast", "reference")
SEGMENTATION_THREADS = 16


def image_seed(seed: int, image_index: int) -> int:
    """The RNG seed of image ``image_index``: independent of the other images in a batch."""
    return int(np.random.SeedSequence([seed, image_index]).generate_state(1)[0])


@dataclass
class _ImageRun:
    """Sampling state of one image in the fast engine.

    Segments come from the pool (``pending_segments``, started a chunk ahead); the fill
    is computed on first use, in ``run_requests``' builder thread.
    """

    index: int
    image: np.ndarray
    segmenter: Segmenter
    fill_spec: Fill
    rng: np.random.RandomState
    seed: int
    columns: np.ndarray
    original: np.ndarray
    tracker: StabilityTracker
    masks: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    request: SampleRequest | None = None
    fit: RidgeFit | None = None
    design: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # X, Y, kernel weights
    done: bool = False

    pending_segments: Future[np.ndarray] | None = None

    @cached_property
    def segments(self) -> np.ndarray:
        if self.pending_segments is not None:
            return self.pending_segments.result()
        return self.segmenter(self.image)

    @cached_property
    def fill(self) -> np.ndarray:
        return fill_image(self.image, self.segments, self.fill_spec)

    @property
    def drawn(self) -> int:
        return sum(len(m) for m in self.masks)


class LimeExplainer(Explainer):
    """LIME for any ``predict_fn: uint8 (N, H, W, 3) -> (N, m)``.

    ``explain(images, targets)`` returns, per image and target, an ``Explanation``
    with ``segment_weights`` ``(K,)``, ``intercept``, ``score`` (weighted R^2),
    ``local_prediction``, ``prediction`` (the model on the original), ``top_segments``
    (``top_k`` ids by weight, descending), ``heatmap = weights[segments]`` float32 and
    ``num_samples``, and ``metrics["stability@k"]`` (k = 5 and ``top_k``; see
    ``stability.py``). Image ``i`` uses the seed ``image_seed(seed, i)``, so a result does
    not depend on the other images of the batch; ``seed=None`` draws a base seed and
    records it in the provenance. ``adaptive`` stops each image early once its top
    superpixels are stable (see ``AdaptiveSampling``); ``num_samples`` is then the cap.

    An image with a single superpixel gets one weight, the effect of hiding the whole
    image, ridge-shrunk: a hidden row is at cosine distance 1 from the original, so the
    kernel weighs it ``exp(-8)`` at the default width (lime's semantics, kept as is).

    Parameters as in ``lime``: ``kernel_width`` of the kernel on cosine distance,
    ``fill`` ``"mean"`` (lime's ``hide_color=None``) or a colour, ``alpha`` of the
    ridge. ``batch_size`` perturbed images go to ``predict_fn`` at a time, drawn from
    several images when one image has fewer samples left. ``sampler`` picks how masks
    are drawn (``samplers.py``): ``"lime"`` is ``lime``'s own draw; the others reduce
    variance at the same number of forward passes.
    """

    method = "lime"

    def __init__(
        self,
        predict_fn: PredictFn,
        *,
        segmenter: Segmenter | None = None,
        num_samples: int = 1000,
        batch_size: int = 256,
        kernel_width: float = 0.25,
        fill: Fill = "mean",
        alpha: float = 1.0,
        engine: str = "fast",
        adaptive: AdaptiveSampling | None = None,
        top_k: int = 5,
        seed: int | None = 0,
        sampler: str = "lime",
    ) -> None:
        _check_config(num_samples, batch_size, kernel_width, alpha, engine, top_k, sampler)
        if adaptive is not None and engine != "fast":
            raise ConfigError("config.engine", "adaptive sampling needs engine='fast'")
        if sampler != "lime" and engine != "fast":
            raise ConfigError("config.engine", "engine='reference' draws lime's masks only")
        self.predict_fn = predict_fn
        self.segmenter = segmenter if segmenter is not None else SlicSegmenter()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.kernel_width = kernel_width
        self.fill = fill
        self.alpha = alpha
        self.engine = engine
        self.adaptive = adaptive
        self.top_k = top_k
        self.seed = seed
        self.sampler = sampler

    def explain(self, images: np.ndarray, targets: Targets) -> list[list[Explanation]]:
        if self.engine == "reference":
            return self._explain_references(images, targets)
        [explained] = self.explain_stream([(images, targets)])
        return explained

    explain_batch = explain

    def explain_stream(
        self, chunks: Iterable[tuple[np.ndarray, Targets]], *, consecutive: bool = False
    ) -> Iterator[list[list[Explanation]]]:
        """``explain(images, targets)`` of each chunk in turn, equal to it, overlapped.

        A bounded pipeline, one chunk ahead: while the model works on chunk ``i``'s
        samples, chunk ``i + 1``'s images are segmented on the thread pool, and chunk
        ``i``'s fits, stability and explanations are made on the pool while the model
        works on chunk ``i + 1``. On a GPU the host work per image (SLIC ~46 ms of one
        core at 224 px, the fill, the fits) then hides behind the device's ~60 ms per
        image of VGG16 at 1,000 samples instead of sitting between its batches.
        ``chunks`` is read one ahead of the chunk being sampled. When a chunk fails,
        every chunk before it has been yielded before the error is raised.

        ``consecutive``: the chunks are parts of one batch, cut in order. Image indices
        (hence image seeds) then count on across chunks and the stream has one base
        seed, so the chunks' results, concatenated, are ``explain`` of the whole batch.
        """
        offset = 0
        seed = self._base_seed() if consecutive else None
        if self.engine == "reference":
            for images, targets in chunks:
                explained = self._explain_references(images, targets, offset, seed)
                offset += len(explained) if consecutive else 0
                yield explained
            return
        threads = max(1, min(os.cpu_count() or 1, SEGMENTATION_THREADS))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            source = iter(chunks)
            ahead = self._prepare(next(source, None), pool)
            finishing: Future[list[list[Explanation]]] | None = None
            while ahead is not None:
                current, ahead = ahead, None
                ahead = self._prepare(next(source, None), pool)
                try:
                    runs, rows, chunk_seed = self._begin(*current, offset, seed)
                    self._sample(runs)
                except Exception:
                    # The chunk before is done: hand it over before the error.
                    if finishing is not None:
                        yield finishing.result()
                    raise
                offset += len(runs) if consecutive else 0
                done = pool.submit(self._finish, runs, rows, chunk_seed)
                if finishing is not None:
                    yield finishing.result()
                finishing = done
            if finishing is not None:
                yield finishing.result()

    def _explain_references(
        self, images: np.ndarray, targets: Targets, offset: int = 0, seed: int | None = None
    ) -> list[list[Explanation]]:
        batch = check_images(stack_images(images))
        originals = self._predict(batch)
        rows = normalize_targets(targets, len(batch), originals.shape[1])
        seed = self._base_seed() if seed is None else seed
        return [
            self._explain_reference(offset + i, batch[i], row, originals[i], seed)
            for i, row in enumerate(rows)
        ]

    def _base_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(np.random.SeedSequence().generate_state(1)[0])

    def _prepare(
        self, chunk: tuple[np.ndarray, Targets] | None, pool: ThreadPoolExecutor
    ) -> tuple[np.ndarray, Targets, list[Future[np.ndarray]]] | None:
        """Check a chunk's images and start segmenting them on ``pool``."""
        if chunk is None:
            return None
        images, targets = chunk
        batch = check_images(stack_images(images))
        return batch, targets, [pool.submit(self.segmenter, image) for image in batch]

    def _begin(
        self,
        batch: np.ndarray,
        targets: Targets,
        segments: list[Future[np.ndarray]],
        offset: int = 0,
        seed: int | None = None,
    ) -> tuple[list[_ImageRun], list[list[TargetInfo]], int]:
        """The model on the originals, the targets, and each image's sampling state
        (image ``i`` of the chunk is image ``offset + i`` of its batch)."""
        originals = self._predict(batch)
        rows = normalize_targets(targets, len(batch), originals.shape[1])
        seed = self._base_seed() if seed is None else seed
        runs = [
            self._start(offset + i, batch[i], row, originals[i], seed) for i, row in enumerate(rows)
        ]
        for run, pending in zip(runs, segments, strict=True):
            run.pending_segments = pending
        return runs, rows, seed

    def _finish(
        self, runs: list[_ImageRun], rows: list[list[TargetInfo]], seed: int
    ) -> list[list[Explanation]]:
        columns = _columns(runs)
        for run in runs:
            if run.fit is None:
                self._refit(run, columns)
        return [self._explanations(run, row, seed) for run, row in zip(runs, rows, strict=True)]

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        parts = [
            predict_outputs(self.predict_fn, batch[i : i + self.batch_size], None)
            for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def _start(
        self, index: int, image: np.ndarray, row: list[TargetInfo], original: np.ndarray, seed: int
    ) -> _ImageRun:
        rule = self.adaptive or AdaptiveSampling(min_samples=self.num_samples)
        max_samples = self.num_samples if self.adaptive is None else rule.max_samples
        return _ImageRun(
            index=index,
            image=image,
            segmenter=self.segmenter,
            fill_spec=self.fill,
            rng=np.random.RandomState(image_seed(seed, index)),
            seed=image_seed(seed, index),
            columns=np.array([t.column for t in row]),
            original=original,
            tracker=StabilityTracker(rule, max_samples or self.num_samples),
        )

    def _sample(self, runs: list[_ImageRun]) -> None:
        """Rounds of sampling over the unfinished images, one packed forward pass each.
        Without adaptive stopping there is one round, and its fits are left to
        ``_finish`` (on the pool, while the model works on the next chunk)."""
        columns = _columns(runs)
        while active := [run for run in runs if not run.done]:
            requests = (self._draw(run) for run in active)
            run_requests(self.predict_fn, requests, self.batch_size, columns, runs[0].image.shape)
            for run in active:
                assert run.request is not None
                if run.request.outputs:
                    run.outputs.append(run.request.result())
                if self.adaptive is None:
                    run.done = True
                else:
                    self._refit(run, columns)

    def _draw(self, run: _ImageRun) -> SampleRequest:
        first = run.drawn == 0
        n = run.tracker.next_round_size(run.drawn)
        masks = draw_sampler_masks(
            self.sampler, run.rng, n, int(run.segments.max()) + 1, first=first
        )
        run.masks.append(masks)
        # Row 0 is the unperturbed image: its output is already known.
        todo = masks[1:] if first else masks
        run.request = SampleRequest(run.image, run.fill, run.segments, todo)
        return run.request

    def _refit(self, run: _ImageRun, columns: np.ndarray) -> None:
        X = np.concatenate(run.masks, axis=0)
        Y = np.concatenate([run.original[columns][None], *run.outputs], axis=0)
        weights = exponential_kernel(cosine_distances_to_ones(X), self.kernel_width)
        positions = np.searchsorted(columns, run.columns)
        run.design = (X, Y[:, positions], weights)
        run.fit = fit_weighted_ridge(*run.design, self.alpha)
        if self.adaptive is None:
            run.done = True
            return
        k = self.adaptive.top_k
        separation = stability = 0.0
        if self.adaptive.criterion == "separation":
            separation = float(run.fit.separation(k).min())
        elif self.adaptive.criterion == "stability":
            stability = float(self._bootstrap(run, (k,))[k].min())
        run.done = run.tracker.update(run.fit.top_segments(k), run.drawn, separation, stability)

    def _bootstrap(self, run: _ImageRun, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
        """``stability@k`` per ``k`` and target of ``run``, from its samples so far."""
        assert run.design is not None
        X, Y, weights = run.design
        groups = resampling_groups(self.sampler, [len(m) for m in run.masks])
        return bootstrap_stability(X, Y, weights, groups, alpha=self.alpha, ks=ks, seed=run.seed)

    def _explanations(self, run: _ImageRun, row: list[TargetInfo], seed: int) -> list[Explanation]:
        assert run.fit is not None
        fit = run.fit
        provenance = self._provenance(run.segments, seed, run.index)
        found = self._bootstrap(run, stability_ks(self.top_k))
        stability = {f"stability@{k}": values for k, values in found.items()}
        return [
            self._explanation(
                run.index,
                target,
                run.segments,
                fit.coef[:, j],
                (fit.intercept[j], fit.score[j], fit.local_prediction[j]),
                float(run.original[target.column]),
                run.drawn,
                provenance,
                {name: float(values[j]) for name, values in stability.items()},
            )
            for j, target in enumerate(row)
        ]

    def _explain_reference(
        self, index: int, image: np.ndarray, row: list[TargetInfo], original: np.ndarray, seed: int
    ) -> list[Explanation]:
        ref = explain_with_lime(
            self.predict_fn,
            image,
            sorted({t.column for t in row}),
            segmenter=self.segmenter,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            kernel_width=self.kernel_width,
            fill=self.fill,
            alpha=self.alpha,
            seed=image_seed(seed, index),
        )
        provenance = self._provenance(ref.segments, seed, index)
        columns = sorted(ref.coef)
        groups = resampling_groups("lime", [len(ref.masks)])
        found = bootstrap_stability(
            ref.masks,
            ref.outputs[:, columns],
            ref.kernel_weights,
            groups,
            alpha=self.alpha,
            ks=stability_ks(self.top_k),
            seed=image_seed(seed, index),
        )
        stability = {f"stability@{k}": values for k, values in found.items()}
        return [
            self._explanation(
                index,
                t,
                ref.segments,
                ref.coef[t.column],
                (ref.intercept[t.column], ref.score[t.column], ref.local_prediction[t.column]),
                float(original[t.column]),
                self.num_samples,
                provenance,
                {name: float(v[columns.index(t.column)]) for name, v in stability.items()},
            )
            for t in row
        ]

    def _explanation(
        self,
        index: int,
        target: TargetInfo,
        segments: np.ndarray,
        weights: np.ndarray,
        fit: tuple[float, float, float],
        prediction: float,
        num_samples: int,
        provenance: dict[str, Any],
        metrics: dict[str, float],
    ) -> Explanation:
        weights = np.asarray(weights, dtype=np.float64)
        order = np.argsort(-weights, kind="stable")
        return Explanation(
            image_index=index,
            target=target,
            method=self.method,
            heatmap=weights[segments].astype(np.float32),
            prediction=prediction,
            segments=segments,
            segment_weights=weights,
            intercept=float(fit[0]),
            score=float(fit[1]),
            local_prediction=float(fit[2]),
            top_segments=[int(s) for s in order[: self.top_k]],
            num_samples=int(num_samples),
            provenance=provenance,
            metrics=metrics,
        )

    def _provenance(self, segments: np.ndarray, seed: int, index: int) -> dict[str, Any]:
        return {
            "method": self.method,
            "engine": self.engine,
            "sampler": self.sampler,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "kernel_width": self.kernel_width,
            "alpha": self.alpha,
            "fill": self.fill if isinstance(self.fill, str | int) else list(self.fill),
            "segmenter": self.segmenter.describe(),
            "segment_hash": segment_hash(segments),
            "num_segments": int(segments.max()) + 1,
            "seed": seed,
            "image_seed": image_seed(seed, index),
            "adaptive": self.adaptive.to_json() if self.adaptive else None,
            "versions": dict(versions()),
        }


def _columns(runs: list[_ImageRun]) -> np.ndarray:
    """The model output columns any image of the chunk is explained for, sorted."""
    return np.unique(np.concatenate([run.columns for run in runs]))


@cache
def versions() -> dict[str, str | None]:
    """Versions of the packages that shape a LIME result (None when not installed)."""
    found: dict[str, str | None] = {}
    for name in ("lime", "keras", "numpy", "scikit-image", "scikit-learn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _check_config(
    num_samples: int,
    batch_size: int,
    kernel_width: float,
    alpha: float,
    engine: str,
    top_k: int,
    sampler: str,
) -> None:
    problems = []
    if num_samples < 2:
        problems.append(f"num_samples must be >= 2, got {num_samples}")
    if batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {batch_size}")
    if kernel_width <= 0:
        problems.append(f"kernel_width must be > 0, got {kernel_width}")
    if alpha <= 0:
        problems.append(f"alpha must be > 0, got {alpha}")
    if engine not in ENGINES:
        problems.append(f"engine must be one of {ENGINES}, got {engine!r}")
    if top_k < 1:
        problems.append(f"top_k must be >= 1, got {top_k}")
    if sampler not in SAMPLERS:
        problems.append(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if problems:
        raise ConfigError("config.lime", "; ".join(problems))
