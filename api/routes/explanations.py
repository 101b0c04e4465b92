"""Batches: explain (or predict) many images with a trained model, as one job.

The request is checked completely before anything is stored (model ready, method and
parameter values within their schema (`xmlcore.params`) and fit for the model's image
size, target possible, keys safe, an inline list within `Settings.max_inline_batch_keys`,
the estimated forward passes within the tenant's limit); a refused request leaves no
row and no message. Keys are relative to the dataset's images folder (`dataset_id`) or
to the tenant's uploads.

An inline `images` list is inserted in the request (bounded, so fast) and the job is
`queued` at once. A `prefix` or a `manifest_key` can name a million images: the API
never lists or reads them. It stores the job as `preparing` with its source and sends
a `prepare_batch` task (default queue) after the commit; that task lists or reads the
source page by page and inserts the items in bulk (`xmlx.jobs.prepare`), and the job
fails with a code when the source is empty, unreadable or over `max_batch_items`, or
when the listed count makes the job cost more than the tenant's limit. The job's params
carry the server-built `image_prefix` the workers read from.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api import inputs
from api.cost import check_cost
from api.deps import ApiState, IdempotencyKey, State, Submitter
from api.idempotency import fingerprint
from api.problems import ProblemError, problem_responses
from api.routes.datasets import find_dataset
from api.schemas import (
    BatchRequest,
    ExplanationRequest,
    ExplanationRequestBase,
    LabelTarget,
    LatentTarget,
    PredictionRequest,
)
from api.submit import (
    checked_callback,
    create_and_enqueue,
    find_model,
    mark_replayed,
    render_job,
    replayed_job,
)
from api.views import JobOut
from xmlx import jobs
from xmlx import repository as repo
from xmlx.dataset_images import images_storage_prefix
from xmlx.db import session_scope
from xmlx.models import JobKind, Model

router = APIRouter(prefix="/v1", tags=["batches"])
ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


@router.post(
    "/explanations",
    status_code=202,
    response_model=JobOut,
    summary="Explain a batch of images (one job, one item per image)",
    responses=ERRORS,
)
def create_explanations(
    body: ExplanationRequest,
    caller: Submitter,
    state: State,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> JobOut:
    extra: dict[str, Any] = {
        "method": body.method,
        "target": body.target.model_dump(),
        # What the client set, typed (the worker fills in the same schema's defaults).
        "params": body.params.model_dump(mode="json", exclude_unset=True),
    }
    if body.evaluate:
        extra["evaluate"] = list(body.evaluate)
    return _submit(state, caller.tenant_id, JobKind.EXPLAIN, body, extra, idempotency_key, response)


@router.post(
    "/predictions",
    status_code=202,
    response_model=JobOut,
    summary="Predict the top labels of a batch of images",
    responses=ERRORS,
)
def create_predictions(
    body: PredictionRequest,
    caller: Submitter,
    state: State,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> JobOut:
    return _submit(state, caller.tenant_id, JobKind.PREDICT, body, {}, idempotency_key, response)


def _submit(
    state: ApiState,
    tenant_id: str,
    kind: JobKind,
    body: BatchRequest,
    extra: dict[str, Any],
    idempotency_key: str | None,
    response: Response,
) -> JobOut:
    fp = fingerprint(f"POST {kind}", body)
    replay = replayed_job(state, tenant_id, idempotency_key, fp)
    if replay is not None:
        mark_replayed(response)
        return render_job(state, replay)
    model = find_model(state, tenant_id, body.model_id, ready=True)
    callback_url = checked_callback(state, tenant_id, body.callback_url)
    base, label_counts = _image_base(state, tenant_id, body.dataset_id, model)
    if isinstance(body, ExplanationRequestBase):
        _check_target(body, model, label_counts)
    check_cost(state, tenant_id, body, model, 1)  # before a prefix or manifest is read
    params = {**extra, "k": body.k, "image_prefix": base}
    if body.images is None:
        source = _source(state, tenant_id, body, base)
        created = jobs.start_preparing(
            state.sessions, tenant_id=tenant_id, kind=kind, source=source, params=params,
            model_id=model.id, idempotency_key=idempotency_key, request_hash=fp,
            callback_url=callback_url,
        )  # fmt: skip
        if created.created and not state.broker.send_preparation(created.job.id):
            state.metrics.enqueue_failures.inc()
        if not created.created:
            mark_replayed(response)
        return render_job(state, created.job)
    item_keys = _item_keys(state, body.images, base)
    check_cost(state, tenant_id, body, model, len(item_keys))
    created = create_and_enqueue(
        state,
        tenant_id,
        kind=kind,
        item_keys=item_keys,
        params=params,
        model_id=model.id,
        idempotency_key=idempotency_key,
        fp=fp,
        chunk_size=state.settings.chunk_size,
        priority=body.priority,
        callback_url=callback_url,
    )
    if not created.created:
        mark_replayed(response)
    return render_job(state, created.job)


def _image_base(
    state: ApiState, tenant_id: str, dataset_id: str | None, model: Model
) -> tuple[str, dict[str, Any]]:
    """The storage prefix keys are relative to, and the model's label counts."""
    with session_scope(state.sessions) as session:
        # The model's own dataset may be deleted: its tombstone keeps the label counts.
        trained_on = repo.get_dataset(session, tenant_id, model.dataset_id, deleted=True)
        if trained_on is None:
            raise ProblemError(404, "dataset.not_found", f"no dataset {model.dataset_id}")
        source = find_dataset(session, tenant_id, dataset_id) if dataset_id else None
    if source is None:
        return inputs.uploads_folder(tenant_id, ""), trained_on.label_counts
    return images_storage_prefix(state.store, source), trained_on.label_counts


def _check_target(body: ExplanationRequestBase, model: Model, label_counts: dict[str, Any]) -> None:
    target = body.target
    if isinstance(target, LabelTarget) and label_counts and target.name not in label_counts:
        raise ProblemError(422, "labels.unknown", f"the model has no label {target.name!r}")
    latent = (model.params.get("layer_sizes") or [None])[-1]
    if isinstance(target, LatentTarget) and latent is not None and target.index >= latent:
        raise ProblemError(
            422, "target.out_of_range", f"latent index {target.index}; the model has {latent}"
        )


def _source(state: ApiState, tenant_id: str, body: BatchRequest, base: str) -> dict[str, str]:
    """Where the preparation task finds the batch's keys (server-built storage keys)."""
    if body.prefix is not None:
        if body.prefix:
            inputs.check_user_keys([body.prefix.removesuffix("/")])
        return {"base": base, "prefix": base + body.prefix}
    assert body.manifest_key is not None
    manifest = inputs.upload_key(tenant_id, body.manifest_key)
    inputs.check_manifest_visible(state.sessions, tenant_id, manifest)
    if not state.store.exists(manifest):
        raise ProblemError(422, "manifest.not_found", "no object at manifest_key")
    return {"base": base, "manifest": manifest}


def _item_keys(state: ApiState, item_keys: list[str], base: str) -> list[str]:
    limit = min(state.settings.max_inline_batch_keys, state.settings.max_batch_items)
    if not item_keys:
        raise ProblemError(422, "batch.empty", "the batch has no image")
    if len(item_keys) > limit:
        raise ProblemError(
            413, "batch.too_large",
            f"more than {limit} images listed in the request; put the keys in a manifest "
            "object (one a line) and pass `manifest_key`, or split the batch",
        )  # fmt: skip
    if len(set(item_keys)) != len(item_keys):
        raise ProblemError(422, "batch.duplicate_keys", "an image is listed twice")
    inputs.check_user_keys(item_keys, base)
    return item_keys
