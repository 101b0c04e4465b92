"""Training a two-step model: a job with one item (the model) and one chunk.

Using the same chunk and lease machinery as explanation batches means a training job
gets progress, cancel, retries after a worker dies and reconciliation for free. What
makes it survive hours on workers that die (docs/DESIGN.md, "Long training"):

- slices: a task trains until `train_slice_seconds` have passed, then (at an epoch's
  end, after its checkpoint) hands the chunk back without spending an attempt and sends
  its continuation; the `train` queue's own time limits bound one slice;
- checkpoints after every epoch of both stages (`workers.train_state`), so a
  redelivered, reclaimed or continued training resumes where the last one stopped;
- streamed input: images decoded once into a record file on the worker's disk by a
  bounded loading pass, then read a batch at a time (`xmlcore.records`), so memory
  does not grow with the dataset;
- the model's state is never set here: the kernel moves it with its job
  (`xmlx.jobs.model_state`) on every end: success, failure, cancel, exhaustion.

A seeded hold-out split gives the P@k / PSP@k figures stored with the model (below ten
images there is no hold-out, and the metrics say so instead of scoring the training
images).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sqlalchemy.exc import OperationalError

from workers.context import WorkerContext, configure_accelerator
from workers.lease import ChunkStoppedError, LeaseKeeper, hand_back, is_transient
from workers.progress import start_progress
from workers.train_state import CheckpointStore, cached_images, drop_cached_images
from xmlcore.code_size import code_size_metrics
from xmlcore.errors import XmlcoreError
from xmlcore.labels import LabelSpace, read_manifest
from xmlcore.metrics import evaluate_ranking, propensities
from xmlcore.model import TwoStepModel, train_two_step
from xmlcore.records import RecordBatches
from xmlx import jobs, quotas
from xmlx.keys import attempt_token, model_artifact_key
from xmlx.models import Job, JobKind
from xmlx.storage import StorageError
from xmlx.weights import WeightsError, cached_weights_file, weights_record

log = logging.getLogger("xmlx.worker")
TRAIN_ITEM_KEY = "model"
HOLDOUT_FRACTION = 0.1
MIN_IMAGES_FOR_HOLDOUT = 10
NO_HOLDOUT_NOTE = (
    f"fewer than {MIN_IMAGES_FOR_HOLDOUT} readable images: every image trained the model, "
    "so there is no held-out set and no P@k figure (one on the training images would "
    "overstate the model)"
)
DECODE_THREADS = 4


# The training loop raises it from the epoch callback (kept under its old name).
TrainingCancelledError = ChunkStoppedError


class SliceEndedError(Exception):
    """This task's slice of training time is spent; the last epoch is checkpointed."""


def run_training(ctx: WorkerContext, chunk_id: str) -> str:
    """Train the model of the training job whose chunk is `chunk_id`."""
    settings = ctx.settings
    claim = jobs.claim_chunk(
        ctx.sessions, chunk_id, ctx.owner,
        lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts_per_chunk,
    )  # fmt: skip
    return run_training_claimed(ctx, claim)


def run_training_claimed(ctx: WorkerContext, claim: jobs.Claim) -> str:
    """Train (one slice) for a chunk `ctx.owner` has leased. The `model.zip` goes to a
    key unique to this attempt; the model row points at it only if this worker still
    holds the lease when it records (`jobs.record_model_trained`)."""
    if not claim.claimed or claim.job is None:
        return claim.status.value
    job, chunk_id = claim.job, claim.chunk_id
    checkpoints = CheckpointStore(
        ctx, job.tenant_id, str(job.model_id), attempt_token(claim.attempt, ctx.owner)
    )
    try:
        with LeaseKeeper(ctx, chunk_id) as keeper:
            model, metrics = _train(ctx, job, keeper, checkpoints)
    except SliceEndedError:
        return _continue_later(ctx, chunk_id)
    except ChunkStoppedError as stop:
        if stop.lease_lost:
            return "lease_lost"
        jobs.release_chunk(ctx.sessions, chunk_id, ctx.owner)  # the kernel fails the model
        drop_cached_images(ctx, str(job.model_id))
        return "cancelled"
    except (XmlcoreError, StorageError, WeightsError) as exc:
        if is_transient(exc):
            hand_back(ctx, chunk_id)  # a transient failure does not spend an attempt
            raise
        lease = jobs.LeaseRef(chunk_id, ctx.owner)
        jobs.record_item_failure(
            ctx.sessions, job.id, TRAIN_ITEM_KEY, code=exc.code, message=exc.message, lease=lease
        )
        jobs.complete_chunk(ctx.sessions, chunk_id, ctx.owner)
        drop_cached_images(ctx, str(job.model_id))
        return "failed"
    except (OperationalError, ConnectionError):
        hand_back(ctx, chunk_id)
        raise
    status = _store_model(ctx, claim, model, metrics)
    if status == "done":
        checkpoints.clear()
        drop_cached_images(ctx, str(job.model_id))
    return status


def _continue_later(ctx: WorkerContext, chunk_id: str) -> str:
    """Queue the chunk again (no attempt, no retry spent) and send its wake-up; if the
    broker is down, the reconciler sends it after its grace."""
    from workers.celery_app import send_chunks

    if not jobs.hand_back_chunk(ctx.sessions, chunk_id, ctx.owner, count_retry=False):
        return "lease_lost"
    try:
        send_chunks([(chunk_id, JobKind.TRAIN.value)])
        jobs.mark_dispatched(ctx.sessions, [chunk_id])
    except Exception:
        log.warning("continuation not sent", extra={"chunk_id": chunk_id})
    return "continued"


def _store_model(
    ctx: WorkerContext, claim: jobs.Claim, model: TwoStepModel, metrics: dict[str, Any]
) -> str:
    job, chunk_id = claim.job, claim.chunk_id
    assert job is not None
    model_id = str(job.model_id)
    name = f"model.{attempt_token(claim.attempt, ctx.owner)}.zip"
    artifact_key = model_artifact_key(job.tenant_id, model_id, name)
    archive = model.to_bytes()
    ctx.store.put_bytes(artifact_key, archive, "application/zip")
    outcome = jobs.record_model_trained(
        ctx.sessions, job.id, TRAIN_ITEM_KEY,
        lease=jobs.LeaseRef(chunk_id, ctx.owner), model_id=model_id, artifact_key=artifact_key,
        result={"model_id": model_id, "metrics": metrics},
        model_fields={"metrics": metrics, "history": model.metadata.history,
                      "hierarchy": model.hierarchy().to_json()},
    )  # fmt: skip
    if not outcome.lease_held:
        ctx.store.delete(artifact_key)  # another attempt owns the model now
        return "lease_lost"
    quotas.record_written(ctx.sessions, job.tenant_id, len(archive))
    jobs.complete_chunk(ctx.sessions, chunk_id, ctx.owner)
    return "done"


def _train(
    ctx: WorkerContext, job: Job, keeper: LeaseKeeper, checkpoints: CheckpointStore
) -> tuple[TwoStepModel, dict[str, Any]]:
    progress = start_progress(ctx.sessions, job, jobs.LeaseRef(keeper.chunk_id, ctx.owner))
    params = dict(job.params)
    dataset = params.pop("dataset")
    space = read_manifest(ctx.store.get_bytes(dataset["manifest_key"]))
    train_params = params.get("training", {})
    size = tuple(train_params.get("image_size") or (64, 64))
    records, kept = cached_images(
        ctx,
        job.tenant_id,
        str(job.model_id),
        dataset["image_prefix"],
        space.image_keys,
        (size[0], size[1]),
    )
    if len(kept) < 2:
        raise XmlcoreError(
            "dataset.no_images", "fewer than two images of the dataset could be read"
        )
    n_listed = space.n_images
    space = space.subset(kept)
    train_rows, test_rows = _split(space.n_images, int(train_params.get("seed", 0)))
    kwargs = _training_kwargs(train_params)
    configure_accelerator(ctx.settings)
    weights_sha256 = _use_imported_weights(ctx, kwargs)
    batch = int(kwargs.get("batch_size", 32))
    resume = checkpoints.load()
    model = train_two_step(
        RecordBatches(records, kept[train_rows], batch_size=batch, workers=DECODE_THREADS),
        space.subset(train_rows), model_id=job.model_id,
        on_epoch=_epoch_callback(ctx, keeper, progress), on_stage=progress.stage,
        resume=resume,
        checkpoint=lambda state: checkpoints.save(state, keeper.beat), **kwargs,
    )  # fmt: skip
    test = (
        RecordBatches(records, kept[test_rows], batch_size=batch, workers=DECODE_THREADS)
        if len(test_rows)
        else None
    )
    progress.stage("evaluating")
    metrics = _evaluate(model, test, space, train_rows, test_rows)
    metrics["images_unreadable"] = n_listed - len(kept)
    if resume is not None:
        metrics["resumed_from"] = f"{resume.stage}:{resume.epoch}"
    metrics.update(code_size_metrics(model.metadata.metrics))  # how the code was sized
    if weights_sha256 is not None:
        # The model records what it started from, not this worker's cache path.
        model.metadata.weights = model.metadata.regressor_params["weights"] = "imagenet"
        metrics["imagenet_weights_sha256"] = weights_sha256
    return model, metrics


def _epoch_callback(ctx: WorkerContext, keeper: LeaseKeeper, progress: Any) -> Any:
    """After each epoch (and its checkpoint): heartbeat (stops on cancel or a lost
    lease), record the live progress, then end the slice once its time is spent."""
    deadline = time.monotonic() + ctx.settings.train_slice_seconds

    def on_epoch(stage: str, epoch: int, logs: dict[str, float]) -> None:
        # One line per epoch actually trained, per attempt (owner): the record of how
        # much work a kill or a slice cost (bench/chaos_training.py counts them).
        log.info("training epoch ended: %s %d chunk %s owner %s", stage, epoch + 1,
                 keeper.chunk_id, ctx.owner)  # fmt: skip
        keeper.beat()
        progress.epoch(stage, epoch, logs)
        if time.monotonic() >= deadline:
            raise SliceEndedError(f"slice ended after {stage} epoch {epoch + 1}")

    return on_epoch


def _use_imported_weights(ctx: WorkerContext, kwargs: dict[str, Any]) -> str | None:
    """``weights="imagenet"``: the file imported with ``xmlx weights import``, copied into
    this worker's cache on first use; its SHA-256, or None (no import: xmlcore then looks
    in the Keras cache, e.g. weights baked into the image)."""
    if kwargs.get("weights") != "imagenet":
        return None
    record = weights_record(ctx.store, str(kwargs.get("base", "small")))
    if record is None:
        return None
    kwargs["weights"] = str(cached_weights_file(ctx.store, record, ctx.settings.weights_cache_dir))
    return record.sha256


def _training_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    allowed = {
        "layer_sizes", "ae_loss", "ae_params", "base", "weights", "image_size",
        "fine_tune_layers", "epochs", "batch_size", "learning_rate", "seed", "regressor_params",
    }  # fmt: skip
    kwargs = {key: value for key, value in params.items() if key in allowed}
    for key in ("layer_sizes", "image_size"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    return kwargs


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows); no held-out rows below MIN_IMAGES_FOR_HOLDOUT."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * HOLDOUT_FRACTION)) if n >= MIN_IMAGES_FOR_HOLDOUT else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _evaluate(
    model: TwoStepModel, test_images: RecordBatches | None, space: LabelSpace,
    train_rows: np.ndarray, test_rows: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    metrics: dict[str, Any] = {}
    if test_images is not None:
        Y_test = space.subset(test_rows).matrix
        scores = model.score_blocks(test_images)  # never the dense (n_test, p) scores
        prop = propensities(space.subset(train_rows).matrix)
        ranking = evaluate_ranking(Y_test, scores, ks=(1, 3, 5), propensity=prop)
        metrics = {key: round(float(value), 4) for key, value in ranking.items()}
    else:
        metrics["held_out"] = NO_HOLDOUT_NOTE
    metrics["n_train"] = len(train_rows)
    metrics["n_test"] = len(test_rows)
    assignment = model.hierarchy().label_assignment()
    metrics["hierarchy_units_used"] = len(set(assignment.tolist()))
    return metrics
