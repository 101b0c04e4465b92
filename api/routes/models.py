"""Models: train one on a dataset (a job of kind `train`), read its state and hierarchy.

A training job has one item (`model`) in one chunk, so it gets progress, cancel,
retries and reconciliation from the same machinery as explanation batches. Its params
name the dataset's manifest copy and the server-built images prefix; `weights` is
"none" or "imagenet", never a path.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ApiState, DbSession, IdempotencyKey, Reader, State, Submitter
from api.idempotency import fingerprint
from api.problems import ProblemError, problem_responses
from api.routes.datasets import find_dataset
from api.schemas import ModelRequest, RetrainRequest
from api.submit import (
    checked_callback,
    create_and_enqueue,
    find_model,
    mark_replayed,
    render_job,
    replayed_job,
)
from api.views import ModelCreated, ModelOut, Page, model_out
from xmlx import repository as repo
from xmlx.dataset_images import images_storage_prefix
from xmlx.db import session_scope
from xmlx.errors import XmlxError
from xmlx.models import Job, JobKind, Model, ModelState
from xmlx.weights import PRETRAINED_BASES, weights_record

router = APIRouter(prefix="/v1/models", tags=["models"])
TRAIN_ITEM_KEY = "model"  # the one item of a training job (workers.training reads it)


@router.post(
    "",
    status_code=202,
    response_model=ModelCreated,
    summary="Train a model on a dataset",
    responses=problem_responses(401, 403, 404, 422, 429),
)
def create_model(
    body: ModelRequest,
    caller: Submitter,
    state: State,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> ModelCreated:
    tenant_id = caller.tenant_id
    fp = fingerprint("POST /v1/models", body)
    replay = replayed_job(state, tenant_id, idempotency_key, fp)
    if replay is not None:
        mark_replayed(response)
        return _created(state, tenant_id, replay)
    training = body.training.model_dump(mode="json")
    _check_weights(state, training["base"], training["weights"])
    callback_url = checked_callback(state, tenant_id, body.callback_url)
    with session_scope(state.sessions) as session:
        dataset = find_dataset(session, tenant_id, body.dataset_id)
        _check_layer_sizes(training.get("layer_sizes"), dataset.n_labels)
        image_prefix = images_storage_prefix(state.store, dataset)
        model = repo.create_model(session, tenant_id, dataset.id, name=body.name, params=training)
    return _submit_training(
        state, tenant_id, model.id, (dataset.manifest_key, image_prefix), training,
        (idempotency_key, fp), response, callback_url=callback_url,
    )  # fmt: skip


@router.post(
    "/{model_id}/retrain",
    status_code=202,
    response_model=ModelCreated,
    summary="Train a failed model again: a new job for the same model id",
    responses=problem_responses(401, 403, 404, 409, 422, 429),
)
def retrain_model(
    model_id: str,
    caller: Submitter,
    state: State,
    idempotency_key: IdempotencyKey,
    response: Response,
    body: RetrainRequest | None = None,
) -> ModelCreated:
    """Same model id, same parameters: links and names keep working, the model's jobs
    list shows every attempt, and the new job resumes from the checkpoints the failed
    one left (they are kept until the model is ready). The body is optional."""
    tenant_id = caller.tenant_id
    body = body or RetrainRequest()
    fp = fingerprint(f"POST /v1/models/{model_id}/retrain", body)
    replay = replayed_job(state, tenant_id, idempotency_key, fp)
    if replay is not None:
        mark_replayed(response)
        return _created(state, tenant_id, replay)
    model = find_model(state, tenant_id, model_id, ready=False)
    if model.state != ModelState.FAILED:
        raise ProblemError(
            409,
            "model.not_failed",
            f"model {model_id} is {model.state}; only a failed one retrains",
        )
    training = dict(model.params)
    _check_weights(state, str(training.get("base", "small")), str(training.get("weights", "none")))
    with session_scope(state.sessions) as session:
        dataset = find_dataset(session, tenant_id, model.dataset_id)
        image_prefix = images_storage_prefix(state.store, dataset)
        url = body.callback_url or _last_training_callback(session, model_id)
    callback_url = checked_callback(state, tenant_id, url)  # the allow-list may have changed
    return _submit_training(
        state, tenant_id, model_id, (dataset.manifest_key, image_prefix), training,
        (idempotency_key, fp), response, new_model=False, callback_url=callback_url,
    )  # fmt: skip


def _last_training_callback(session: Session, model_id: str) -> str | None:
    """The callback URL the model's latest training job was given, if any."""
    stmt = (
        select(Job.callback_url)
        .where(Job.model_id == model_id, Job.kind == JobKind.TRAIN)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def _submit_training(
    state: ApiState,
    tenant_id: str,
    model_id: str,
    source: tuple[str, str],
    training: dict[str, Any],
    idempotency: tuple[str | None, str],
    response: Response,
    *,
    new_model: bool = True,
    callback_url: str | None = None,
) -> ModelCreated:
    """Create the training job (its commit moves the model, `xmlx.jobs.model_state`) and
    enqueue it. A model whose job could not be created is failed with a code, never
    left pending without a job."""
    params: dict[str, Any] = {
        "dataset": {"manifest_key": source[0], "image_prefix": source[1]},
        "training": training,
    }
    try:
        created = create_and_enqueue(
            state, tenant_id, kind=JobKind.TRAIN, item_keys=[TRAIN_ITEM_KEY], params=params,
            model_id=model_id, idempotency_key=idempotency[0], fp=idempotency[1], chunk_size=1,
            callback_url=callback_url,
        )  # fmt: skip
    except Exception as exc:
        _fail_unqueued_model(state, model_id, exc)
        raise
    if not created.created and new_model:  # a racing twin won: drop this model row
        _delete_model(state, model_id)
    if not created.created:
        mark_replayed(response)
    return _created(state, tenant_id, created.job)


def _fail_unqueued_model(state: ApiState, model_id: str, exc: Exception) -> None:
    # Only our own errors carry a stable code; others (SQLAlchemy's) have a `code`
    # attribute too, but it names their docs page ("f405"), not the failure.
    code = exc.code if isinstance(exc, XmlxError | ProblemError) else "job.not_created"
    with session_scope(state.sessions) as session:
        repo.transition_model(
            session, model_id, [ModelState.PENDING], ModelState.FAILED,
            error_code=code, error_message=f"the training job could not be created: {exc}"[:500],
        )  # fmt: skip


def _check_layer_sizes(sizes: list[int] | None, n_labels: int) -> None:
    """The code must compress: the first layer must be smaller than the vocabulary."""
    if sizes and sizes[0] >= n_labels:
        raise ProblemError(
            422,
            "training.bad_layer_sizes",
            f"layer_sizes {sizes} must start below the dataset's {n_labels} labels "
            "(leave it out to get a size that fits)",
        )


def _check_weights(state: ApiState, base: str, weights: str) -> None:
    """ImageNet weights are imported by the operator (`xmlx weights import`); without
    them the training would fail on the worker, so refuse it now."""
    if weights != "imagenet":
        return
    if base not in PRETRAINED_BASES:
        raise ProblemError(
            422, "config.weights_unavailable",
            f"base {base!r} is trained from scratch and has no ImageNet weights; "
            f"use weights 'none' or one of {list(PRETRAINED_BASES)}",
        )  # fmt: skip
    if weights_record(state.store, base) is None:
        raise ProblemError(
            422, "config.weights_unavailable",
            f"no ImageNet weights were imported for {base!r} on this deployment "
            "(GET /v1/capabilities lists them; an operator adds them with "
            "`xmlx weights import FILE --base ...`); use weights 'none' meanwhile",
        )  # fmt: skip


def _delete_model(state: ApiState, model_id: str) -> None:
    with session_scope(state.sessions) as session:
        row = session.get(Model, model_id)
        if row is not None:
            session.delete(row)


def _created(state: ApiState, tenant_id: str, job: Job) -> ModelCreated:
    model = find_model(state, tenant_id, str(job.model_id), ready=False)
    return ModelCreated(model=model_out(model, job.id), job=render_job(state, job))


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="A model: state, training params, metrics, history",
    responses=problem_responses(401, 404, 429),
)
def get_model(model_id: str, caller: Reader, state: State, session: DbSession) -> ModelOut:
    model = find_model(state, caller.tenant_id, model_id, ready=False)
    return model_out(model, repo.training_job_id(session, caller.tenant_id, model_id))


@router.get(
    "/{model_id}/hierarchy",
    response_model=dict[str, Any],
    summary="The learned label hierarchy (units of each layer and their labels)",
    responses=problem_responses(401, 404, 409, 429),
)
def get_hierarchy(model_id: str, caller: Reader, state: State) -> dict[str, Any]:
    model = find_model(state, caller.tenant_id, model_id, ready=False)
    if model.state != ModelState.READY or model.hierarchy is None:
        raise ProblemError(409, "model.not_ready", f"model {model_id} is {model.state}")
    stored: Any = model.hierarchy
    # The JSON column may hold the hierarchy as an object or as its JSON text.
    return json.loads(stored) if isinstance(stored, str) else dict(stored)


@router.get(
    "",
    response_model=Page[ModelOut],
    summary="Your models, newest first",
    responses=problem_responses(401, 422, 429),
)
def list_models(
    caller: Reader,
    session: DbSession,
    state: Annotated[ModelState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[ModelOut]:
    page = repo.list_models(session, caller.tenant_id, state=state, limit=limit, cursor=cursor)
    return Page[ModelOut](items=[model_out(m) for m in page.rows], next_cursor=page.next_cursor)
